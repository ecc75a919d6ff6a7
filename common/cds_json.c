/* cds_json: see cds_json.h.  The list of known fields is joined into the
 * message in the order given (the order the documentation lists them);
 * an over-long list is cut by the fixed-size cds_err, never overflowed. */
#include "cds_json.h"

#include <stdio.h>
#include <string.h>

static int is_known(const char *key, const char *const *known)
{
    for (size_t i = 0; known[i]; i++)
        if (strcmp(key, known[i]) == 0)
            return 1;
    return 0;
}

/* "a, b, c" of a NULL-terminated list, or "none". */
static void join_names(char *out, size_t n, const char *const *known)
{
    size_t o = 0;
    snprintf(out, n, "none");
    for (size_t i = 0; known[i] && o < n; i++)
        o += (size_t)snprintf(out + o, n - o, "%s%s", i ? ", " : "", known[i]);
}

int cds_json_check_fields(const json_t *o, const char *path, const char *const *known, const char *hint,
                          cds_err *err)
{
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)o, key, v) {
        if (is_known(key, known))
            continue;
        char names[CDS_ERR_MAX];
        join_names(names, sizeof names, known);
        int has_hint = hint && *hint;
        return cds_errf(err, "%s.%.60s: unknown field; the fields are: %s%s%s%s", path, key, names,
                        has_hint ? " (" : "", has_hint ? hint : "", has_hint ? ")" : "");
    }
    (void)v;
    return 0;
}
