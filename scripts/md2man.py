#!/usr/bin/env python3
"""Turns one of aigw's Markdown documents into a man page (roff with tbl tables).

It knows the Markdown the docs use, no more: headings, paragraphs, bullet lists
(with continuation lines), pipe tables, fenced code blocks, inline code, bold,
italics and links. Used by `make install` for aigw.conf(5) from docs/config.md,
so the reference is written once. Fails (exit 1) on a construct it would garble.

usage: md2man.py --name NAME --section N --title TEXT FILE.md > NAME.N
"""
import argparse
import datetime
import os
import re
import sys


def escape(text):
    """Roff-escapes plain text: backslashes, dashes that are minus signs, and
    every non-ASCII character as a named or \\[uXXXX] glyph (a man page is read
    in any locale)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "".join(c if ord(c) < 128 else "\\[u%04X]" % ord(c) for c in text)


def inline(text):
    """Markdown inline markup to roff font changes, escaping the rest."""
    out = []
    pos = 0
    pattern = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|\[([^\]]+)\]\(([^)]+)\)")
    for m in pattern.finditer(text):
        out.append(escape(text[pos:m.start()]))
        code, bold, ital, link_text, url = m.groups()
        if code is not None:
            out.append("\\fB" + escape(code) + "\\fR")
        elif bold is not None:
            out.append("\\fB" + inline(bold) + "\\fR")
        elif ital is not None:
            out.append("\\fI" + inline(ital) + "\\fR")
        else:
            out.append(inline(link_text))
            if url.startswith("http"):
                out.append(" <" + escape(url) + ">")
        pos = m.end()
    out.append(escape(text[pos:]))
    return "".join(out)


def safe_line(line):
    """A text line must not start with a control character."""
    return "\\&" + line if line.startswith((".", "'")) else line


def table_cells(row):
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    cells = re.split(r"(?<!\\)\|", row)
    return [c.strip().replace("\\|", "|") for c in cells]


def convert(lines, name, section, title, date):
    out = ["'\\\" t", '.TH "%s" "%s" "%s" "aigw" "%s"' % (name.upper(), section, date, title),
           ".SH NAME", "%s \\- %s" % (escape(name), escape(title))]
    i = 0
    n = len(lines)
    para = []

    def flush():
        if para:
            out.append(".PP")
            out.extend(safe_line(inline(p)) for p in para)
            para.clear()

    while i < n:
        line = lines[i].rstrip("\n")
        stripped = line.strip()
        if not stripped:
            flush()
            i += 1
            continue
        if stripped.startswith("```"):
            flush()
            i += 1
            out.extend([".PP", ".RS 4", ".nf"])
            while i < n and not lines[i].strip().startswith("```"):
                out.append(safe_line(escape(lines[i].rstrip("\n"))))
                i += 1
            if i == n:
                raise SystemExit("md2man: unterminated code block")
            out.extend([".fi", ".RE"])
            i += 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            flush()
            level = len(heading.group(1))
            text = inline(heading.group(2))
            if level == 1:
                pass                     # the document title: .TH and NAME say it
            elif level == 2:
                out.append('.SH "%s"' % text.upper().replace('"', "'"))
            else:
                out.append('.SS "%s"' % text.replace('"', "'"))
            i += 1
            continue
        if stripped.startswith("|"):
            flush()
            rows = []
            while i < n and lines[i].strip().startswith("|"):
                cells = table_cells(lines[i])
                if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            width = max(len(r) for r in rows)
            out.extend([".PP", ".TS", "allbox tab(\t);", " ".join(["l"] * (width - 1) + ["lx"]) + "."])
            for k, r in enumerate(rows):
                r = r + [""] * (width - len(r))
                font = ("\\fB", "\\fR") if k == 0 else ("", "")
                out.append("\t".join("T{\n%s\nT}" % safe_line(font[0] + inline(c) + font[1]) for c in r))
            out.append(".TE")
            continue
        item = re.match(r"^(\s*)[-*]\s+(.*)$", line)
        if item:
            flush()
            depth = len(item.group(1)) // 2
            text = [item.group(2)]
            i += 1
            # continuation lines: indented deeper than the bullet, not a new bullet
            while i < n and lines[i].strip() and not re.match(r"^\s*[-*]\s+", lines[i]) \
                    and lines[i].startswith(" " * (len(item.group(1)) + 2)):
                text.append(lines[i].strip())
                i += 1
            if depth:
                out.append(".RS %d" % (2 * depth))
            out.append(".IP \\(bu 2")
            out.extend(safe_line(inline(t)) for t in text)
            if depth:
                out.append(".RE")
            continue
        para.append(stripped)
        i += 1
    flush()
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--section", required=True)
    ap.add_argument("--title", required=True)
    ap.add_argument("file")
    a = ap.parse_args()
    with open(a.file, encoding="utf-8") as f:
        lines = f.readlines()
    # reproducible: the source's date (SOURCE_DATE_EPOCH wins), not the build's
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", os.stat(a.file).st_mtime))
    date = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d")
    sys.stdout.write(convert(lines, a.name, a.section, a.title, date))


if __name__ == "__main__":
    main()
