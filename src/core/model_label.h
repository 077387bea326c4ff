/* Model labels for metrics: which configured glob a request's model matched.
 * The candidates are the globs of the routes' `models` lists and of the [model]
 * sections, in file order, each text once; a model no glob matches is "other".
 * So the label set is bounded by the configuration, whatever names clients send.
 * Built per configuration generation (control plane); matching never allocates. */
#ifndef AIGW_CORE_MODEL_LABEL_H
#define AIGW_CORE_MODEL_LABEL_H

#include <stddef.h>

struct config;

struct model_labels {
    unsigned n;
    const char **glob;      /* borrowed from the config, which outlives the table */
    size_t *glob_len;
    /* Prices: the first [model] section (index in cfg->models) written with each
     * glob, -1: a route's glob only; and the smallest such index at or after each
     * entry (INT_MAX: none), which ends the search for a request's section early. */
    int *section;
    int *section_min_from;
};

/* 0, or -1 (out of memory) with *t empty. */
int model_labels_build(const struct config *cfg, struct model_labels *t);
void model_labels_free(struct model_labels *t);
/* The index of the first glob matching the model (len bytes), -1: none. */
int model_labels_match(const struct model_labels *t, const char *model, size_t len);
/* The first [model] section in file order whose glob matches the model, given
 * label = model_labels_match(t, model, len): its index in cfg->models, or -1.
 * Only globs at or after the label are tried, and none once no later entry can
 * hold an earlier section: with [model] sections alone, no glob at all. */
int model_labels_section(const struct model_labels *t, int label, const char *model, size_t len);

#endif
