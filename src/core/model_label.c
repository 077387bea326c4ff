/* Model labels for metrics. See model_label.h. */
#include "core/model_label.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "policy/glob.h"

struct candidate {
    const char *glob;
    int line;
    unsigned order;         /* among equal lines: list order within a route */
    int section;            /* index in cfg->models, -1: a route's glob */
};

static int by_line(const void *a, const void *b)
{
    const struct candidate *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

int model_labels_build(const struct config *cfg, struct model_labels *t)
{
    *t = (struct model_labels){ 0 };
    size_t max = cfg->nmodels;
    for (unsigned r = 0; r < cfg->nroutes; r++)
        max += glob_list_count(cfg->routes[r].models);
    struct candidate *c = calloc(max ? max : 1, sizeof *c);
    t->glob = calloc(max ? max : 1, sizeof *t->glob);
    t->glob_len = calloc(max ? max : 1, sizeof *t->glob_len);
    t->section = calloc(max ? max : 1, sizeof *t->section);
    t->section_min_from = calloc(max + 1, sizeof *t->section_min_from);
    if (!c || !t->glob || !t->glob_len || !t->section || !t->section_min_from) {
        free(c);
        model_labels_free(t);
        return -1;
    }
    unsigned n = 0;
    for (unsigned r = 0; r < cfg->nroutes; r++)
        for (unsigned i = 0; i < glob_list_count(cfg->routes[r].models); i++, n++)
            c[n] = (struct candidate){ glob_list_pattern(cfg->routes[r].models, i), cfg->routes[r].line, n, -1 };
    for (unsigned m = 0; m < cfg->nmodels; m++, n++)
        c[n] = (struct candidate){ cfg->models[m].glob, cfg->models[m].line, n, (int)m };
    /* sections never share a line: file order is line order */
    qsort(c, n, sizeof *c, by_line);
    for (unsigned i = 0; i < n; i++) {
        unsigned k = 0;
        while (k < t->n && strcmp(t->glob[k], c[i].glob) != 0)
            k++;
        if (k < t->n) {
            /* the same glob in a route and a [model]: one label, the first section's prices */
            if (c[i].section >= 0 && (t->section[k] < 0 || c[i].section < t->section[k]))
                t->section[k] = c[i].section;
            continue;
        }
        t->glob[t->n] = c[i].glob;
        t->section[t->n] = c[i].section;
        t->glob_len[t->n++] = strlen(c[i].glob);
    }
    free(c);
    t->section_min_from[t->n] = INT_MAX;
    for (unsigned i = t->n; i-- > 0;) {
        int s = t->section[i] >= 0 ? t->section[i] : INT_MAX;
        t->section_min_from[i] = s < t->section_min_from[i + 1] ? s : t->section_min_from[i + 1];
    }
    return 0;
}

void model_labels_free(struct model_labels *t)
{
    free(t->glob);
    free(t->glob_len);
    free(t->section);
    free(t->section_min_from);
    *t = (struct model_labels){ 0 };
}

int model_labels_match(const struct model_labels *t, const char *model, size_t len)
{
    for (unsigned i = 0; i < t->n; i++)
        if (glob_match(t->glob[i], t->glob_len[i], model, len))
            return (int)i;
    return -1;
}

int model_labels_section(const struct model_labels *t, int label, const char *model, size_t len)
{
    if (label < 0)
        return -1;     /* every [model] glob is a label: none matches */
    /* Entries are in the order of each glob's first line, so a section whose glob
     * a route wrote earlier sits before sections of lower index: take the lowest
     * matching index, stopping once no later entry holds a lower one. */
    int best = t->section[label] >= 0 ? t->section[label] : INT_MAX;
    for (unsigned i = (unsigned)label + 1; i < t->n && t->section_min_from[i] < best; i++)
        if (t->section[i] >= 0 && t->section[i] < best && glob_match(t->glob[i], t->glob_len[i], model, len))
            best = t->section[i];
    return best == INT_MAX ? -1 : best;
}
