// The official openai SDK against aigw over HTTPS, with aigw-mockllm behind it.
// Run by tests/integration/test_tls.c (node --test tests/node/) with:
//   AIGW_BASE_URL        https://127.0.0.1:PORT/v1 (the certificate names 127.0.0.1: verified)
//   AIGW_KEY             an API key aigw accepts
//   NODE_EXTRA_CA_CERTS  the test CA that signed aigw's certificate
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = process.env.AIGW_BASE_URL;
const apiKey = process.env.AIGW_KEY;
assert.ok(baseURL && apiKey, 'AIGW_BASE_URL and AIGW_KEY must be set');

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 20000 });
const model = 'mock-llama-3.1-8b';
const messages = [{ role: 'user', content: 'Say something.' }];

test('chat completion, not streamed', async () => {
  const { data, response } = await client.chat.completions
    .create({ model, messages, max_tokens: 8 })
    .withResponse();
  assert.equal(response.status, 200);
  assert.ok(response.headers.get('x-request-id'), 'x-request-id header');
  assert.equal(data.object, 'chat.completion');
  assert.ok(data.choices[0].message.content.length > 0, 'some content');
  assert.equal(data.usage.completion_tokens, 8);
});

test('chat completion, streamed', async () => {
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 8, stream: true, stream_options: { include_usage: true },
  });
  let text = '', chunks = 0, usage = null, finish = null;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta?.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(chunks >= 8, `only ${chunks} chunks for 8 tokens`);
  assert.ok(text.length > 0, 'streamed content');
  assert.ok(finish, 'a finish_reason');
  assert.ok(usage && usage.completion_tokens === 8, `usage chunk: ${JSON.stringify(usage)}`);
});

test('a wrong key is an OpenAI-shaped 401', async () => {
  const bad = new OpenAI({ baseURL, apiKey: 'sk-not-a-key', maxRetries: 0 });
  await assert.rejects(bad.chat.completions.create({ model, messages, max_tokens: 2 }), (err) => {
    assert.equal(err.status, 401);
    assert.equal(err.code, 'invalid_api_key');
    return true;
  });
});
