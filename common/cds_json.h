/* cds_json: checks of JSON documents (jansson) that every reader of a spec
 * or payload shares, with one message style.
 *
 * An unknown field is an error, never skipped: a misspelt field ("widht",
 * "learning_rate") would otherwise be ignored and the default used without
 * a word.  The message names the field by its path and lists the fields
 * that are known, so the fix is in the message:
 *
 *     PATH.KEY: unknown field; the fields are: a, b, c[ (HINT)]
 *
 * PATH is what the caller calls the object ("$", "$.train", or with the
 * document's name in front, "sweep spec $.train"). */
#ifndef CDS_JSON_H
#define CDS_JSON_H

#include <jansson.h>

#include "cds_err.h"

/* Refuses the first key of object o that is not in known (NULL-terminated;
 * an empty list is written "none").  hint, if not NULL or "", goes in
 * parentheses at the end.  Returns 0, or -1 with err set; an o that is not
 * an object has no keys and passes (the caller checks the type). */
int cds_json_check_fields(const json_t *o, const char *path, const char *const *known, const char *hint,
                          cds_err *err);

#endif
