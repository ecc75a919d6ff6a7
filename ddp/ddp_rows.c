/* ddp_rows: a sparse mlp's embedding gradient averaged over the gang as
 * rows (see ddp_rows.h).
 *
 * A step's exchange, every rank alike:
 *   pack     the rows this rank's batch touched, ascending, and their
 *            gradient (nn_model_row_grad_get), into one payload: n int32
 *            row numbers, then n·cols floats;
 *   sizes    every rank's payload size (an all-gather of one size_t);
 *   gather   every rank's payload (an all-gather of bytes, rank order);
 *   merge    the union of the W sorted lists, a W-way merge; a row's value
 *            is the sum over the ranks that have it, in rank order, times
 *            1/W: the ranks that lack it contribute zero, so this is the
 *            mean of the W dense gradients, as the dense all-reduce makes
 *            it (ddp_comm: Gloo's sum, then 1/W on every rank) and, at
 *            W = 2, the same bits;
 *   set      the union as the parameter's packed gradient
 *            (nn_model_row_grad_set), which the optimiser steps over.
 * Every rank gathers the same bytes and merges them the same way, so the
 * ranks keep identical weights.  Buffers grow to the largest step seen and
 * are kept. */
#include "ddp_rows.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct ddp_rows {
    nn_model *m;
    size_t param, dim, cols;
    int W;
    /* this rank's packed rows and values (dim rows at most) */
    int32_t *rows;
    float *vals;
    /* the payloads of every rank, and the merged gradient */
    char *out, *send;
    size_t out_cap, send_cap;
    size_t *sizes, *each;
    int32_t *m_rows;
    float *m_vals;
    size_t *at; /* per rank: the next row of its list during the merge */
    ddp_rows_stats last;
};

int ddp_rows_new(nn_model *m, size_t param, ddp_comm *c, ddp_rows **out, cds_err *err)
{
    *out = NULL;
    nn_param *p = param < nn_model_param_count(m) ? nn_model_param(m, param) : NULL;
    if (!p || !p->embedding)
        return cds_errf(err, "parameter %zu is not a sparse first layer: nothing to exchange as rows", param);
    ddp_rows *s = calloc(1, sizeof *s);
    if (!s)
        return cds_err_nomem(err, "out of memory for a row-sparse exchange");
    s->m = m;
    s->param = param;
    s->dim = (size_t)p->w.shape[0];
    s->cols = (size_t)p->w.shape[1];
    s->W = ddp_comm_size(c);
    s->rows = malloc(s->dim * sizeof *s->rows);
    s->vals = malloc(s->dim * s->cols * sizeof *s->vals);
    s->m_rows = malloc(s->dim * sizeof *s->m_rows);
    s->m_vals = malloc(s->dim * s->cols * sizeof *s->m_vals);
    s->sizes = calloc((size_t)s->W, sizeof *s->sizes);
    s->each = calloc((size_t)s->W, sizeof *s->each);
    s->at = calloc((size_t)s->W, sizeof *s->at);
    if (!s->rows || !s->vals || !s->m_rows || !s->m_vals || !s->sizes || !s->each || !s->at) {
        ddp_rows_free(s);
        return cds_err_nomem(err, "out of memory for a row-sparse exchange of %zu rows of %zu", s->dim, s->cols);
    }
    *out = s;
    return 0;
}

static int grow(char **buf, size_t *cap, size_t need, cds_err *err)
{
    if (need <= *cap)
        return 0;
    char *b = realloc(*buf, need);
    if (!b)
        return cds_err_nomem(err, "out of memory for %zu bytes of gathered rows", need);
    *buf = b;
    *cap = need;
    return 0;
}

/* Rank r's payload: its row count, its rows, its values. */
typedef struct payload {
    size_t n;
    const int32_t *rows;
    const float *vals;
} payload;

static payload payload_of(const ddp_rows *s, int r)
{
    size_t off = 0;
    for (int k = 0; k < r; k++)
        off += s->sizes[k];
    size_t n = s->sizes[r] / (sizeof(int32_t) + s->cols * sizeof(float));
    const char *b = s->out + off;
    return (payload){.n = n, .rows = (const int32_t *)(const void *)b,
                     .vals = (const float *)(const void *)(b + n * sizeof(int32_t))};
}

/* The W-way merge of the gathered lists into m_rows / m_vals; returns the
 * union's size. */
static size_t merge(ddp_rows *s)
{
    payload pl[64], *P = pl;
    if (s->W > 64 && !(P = malloc((size_t)s->W * sizeof *P)))
        return (size_t)-1;
    for (int r = 0; r < s->W; r++) {
        P[r] = payload_of(s, r);
        s->at[r] = 0;
    }
    float inv = 1.0f / (float)s->W;
    size_t u = 0;
    for (;;) {
        int32_t next = INT32_MAX;
        for (int r = 0; r < s->W; r++)
            if (s->at[r] < P[r].n && P[r].rows[s->at[r]] < next)
                next = P[r].rows[s->at[r]];
        if (next == INT32_MAX)
            break;
        float *dst = s->m_vals + u * s->cols;
        int first = 1;
        for (int r = 0; r < s->W; r++) {
            if (s->at[r] >= P[r].n || P[r].rows[s->at[r]] != next)
                continue;
            const float *src = P[r].vals + s->at[r]++ * s->cols;
            if (first)
                memcpy(dst, src, s->cols * sizeof *dst);
            else
                for (size_t i = 0; i < s->cols; i++)
                    dst[i] += src[i];
            first = 0;
        }
        if (s->W > 1)
            for (size_t i = 0; i < s->cols; i++)
                dst[i] *= inv;
        s->m_rows[u++] = next;
    }
    if (P != pl)
        free(P);
    return u;
}

/* The exchange of this rank's n packed rows (in s->rows, s->vals). */
static int exchange(ddp_rows *s, ddp_comm *c, size_t n, cds_err *err)
{
    size_t row_bytes = sizeof(int32_t) + s->cols * sizeof(float), mine = n * row_bytes;
    if (grow(&s->send, &s->send_cap, mine ? mine : 1, err) != 0)
        return -1;
    memcpy(s->send, s->rows, n * sizeof(int32_t));
    memcpy(s->send + n * sizeof(int32_t), s->vals, n * s->cols * sizeof(float));
    if (ddp_allgather_sizes(c, mine, s->sizes, err) != 0)
        return -1;
    size_t total = 0;
    for (int r = 0; r < s->W; r++) {
        if (s->sizes[r] % row_bytes != 0 || s->sizes[r] / row_bytes > s->dim)
            return cds_errf(err, "rank %d sent %zu bytes of rows: not whole rows of %zu columns of a %zu-row weight "
                                 "(the gang's models differ)", r, s->sizes[r], s->cols, s->dim);
        s->each[r] = s->sizes[r];
        total += s->sizes[r];
    }
    if (grow(&s->out, &s->out_cap, total ? total : 1, err) != 0 ||
        ddp_allgatherv(c, s->send, mine, s->out, s->each, err) != 0)
        return -1;
    size_t u = merge(s);
    if (u == (size_t)-1)
        return cds_err_nomem(err, "out of memory merging %d ranks' rows", s->W);
    s->last = (ddp_rows_stats){.rows_mine = n, .rows_union = u, .bytes_sent = mine, .bytes_gathered = total};
    return nn_model_row_grad_set(s->m, s->param, s->m_rows, s->m_vals, u, err);
}

int ddp_rows_reduce(ddp_rows *s, ddp_comm *c, cds_err *err)
{
    size_t n;
    if (nn_model_row_grad_get(s->m, s->param, s->rows, s->vals, &n, err) != 0)
        return -1;
    return exchange(s, c, n, err);
}

int ddp_rows_reduce_none(ddp_rows *s, ddp_comm *c, cds_err *err)
{
    return exchange(s, c, 0, err);
}

ddp_rows_stats ddp_rows_last(const ddp_rows *s) { return s->last; }

void ddp_rows_free(ddp_rows *s)
{
    if (!s)
        return;
    free(s->rows);
    free(s->vals);
    free(s->out);
    free(s->send);
    free(s->sizes);
    free(s->each);
    free(s->m_rows);
    free(s->m_vals);
    free(s->at);
    free(s);
}
