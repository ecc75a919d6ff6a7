/* cds_cli: see cds_cli.h.
 *
 * getopt_long does the scanning; cds_cli_next only looks at what it
 * returned.  An option it matched is checked against the argv element it
 * came from: getopt_long matched "--epoch" to --epochs as a unique prefix,
 * and cds_cli refuses that (only the element's name before '=' is looked at
 * or printed, never the value).  Its complaints ('?' and ':', with opterr
 * off so it prints nothing itself) become one message, with a suggestion
 * from cds_cli_suggest when a real option is near. */
#include "cds_cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define NAME_MAX_LEN 64
#define CDS_CLI_LINE_MAX 1024 /* a usage error naming a long path still fits */

void cds_cli_init(cds_cli *cli, const char *prog, const char *help, int argc, char **argv, const char *shortopts,
                  const struct option *opts)
{
    memset(cli, 0, sizeof *cli);
    cli->prog = prog;
    cli->help = help;
    cli->argc = argc;
    cli->argv = argv;
    cli->opts = opts;
    /* A leading '+' (stop at the first non-option) must stay first; ':'
     * comes right after it so a missing value is reported as ':'. */
    const char *s = shortopts ? shortopts : "";
    int plus = s[0] == '+';
    s += plus;
    if (s[0] == ':')
        s++;
    snprintf(cli->shortopts, sizeof cli->shortopts, "%s:%s", plus ? "+" : "", s);
    opterr = 0;
    optind = 0; /* GNU getopt: 0 also resets its internal state for a fresh scan */
}

/* Levenshtein distance of a and b, both shorter than NAME_MAX_LEN. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b), row[NAME_MAX_LEN + 1];
    if (na > NAME_MAX_LEN || nb > NAME_MAX_LEN)
        return (size_t)-1;
    for (size_t j = 0; j <= nb; j++)
        row[j] = j;
    for (size_t i = 1; i <= na; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[nb];
}

const char *cds_cli_suggest(const struct option *opts, const char *name)
{
    while (*name == '-')
        name++;
    size_t n = strlen(name);
    if (n == 0)
        return NULL;
    for (const struct option *o = opts; o->name; o++)
        if (strncmp(o->name, name, n) == 0)
            return o->name;
    /* Short names tolerate one edit, longer ones two: "--ids" is not "--x". */
    size_t limit = n >= 6 ? 2 : 1, best = limit + 1;
    const char *found = NULL;
    for (const struct option *o = opts; o->name; o++) {
        size_t d = edit_distance(name, o->name);
        if (d < best) {
            best = d;
            found = o->name;
        }
    }
    return found;
}

/* "--name" of an argv element "--name=value" (the value may be a secret). */
static void element_name(const char *arg, char *out, size_t n)
{
    snprintf(out, n, "%.*s", (int)strcspn(arg, "="), arg);
}

/* The option of opts named exactly name (without "--"), or NULL. */
static const struct option *find_exact(const struct option *opts, const char *name)
{
    for (const struct option *o = opts; o->name; o++)
        if (strcmp(o->name, name) == 0)
            return o;
    return NULL;
}

/* "unknown option NAME", with "(did you mean --X?)" when one is near. */
static int unknown(cds_cli *cli, const char *name)
{
    const char *near = strncmp(name, "--", 2) == 0 ? cds_cli_suggest(cli->opts, name + 2) : NULL;
    if (near)
        snprintf(cli->msg, sizeof cli->msg, "unknown option %s (did you mean --%s?)", name, near);
    else
        snprintf(cli->msg, sizeof cli->msg, "unknown option %s", name);
    return CDS_CLI_BAD;
}

/* getopt_long returned '?' or ':' for the element just passed. */
static int complaint(cds_cli *cli, int c)
{
    char name[NAME_MAX_LEN + 8];
    const char *el = optind > 0 && optind <= cli->argc ? cli->argv[optind - 1] : "";
    if (strncmp(el, "--", 2) == 0 || optopt <= 0 || optopt > 127)
        element_name(el, name, sizeof name);
    else
        snprintf(name, sizeof name, "-%c", optopt);
    if (c == ':') {
        snprintf(cli->msg, sizeof cli->msg, "option %s needs a value", name);
        return CDS_CLI_BAD;
    }
    const struct option *o = strncmp(name, "--", 2) == 0 ? find_exact(cli->opts, name + 2) : NULL;
    if (o && o->has_arg == no_argument && strchr(el, '=')) {
        snprintf(cli->msg, sizeof cli->msg, "option %s takes no value", name);
        return CDS_CLI_BAD;
    }
    return unknown(cli, name);
}

/* The argv element getopt_long just matched to option o. */
static const char *matched_element(const cds_cli *cli, const struct option *o)
{
    if (o->has_arg == required_argument && optarg == cli->argv[optind - 1] && optind >= 2)
        return cli->argv[optind - 2]; /* "--name value" */
    return cli->argv[optind - 1];     /* "--name" or "--name=value" */
}

int cds_cli_next(cds_cli *cli)
{
    int idx = -1;
    cli->arg = NULL;
    cli->msg[0] = '\0';
    int c = getopt_long(cli->argc, cli->argv, cli->shortopts, cli->opts, &idx);
    if (c == -1)
        return CDS_CLI_END;
    if (c == '?' || c == ':')
        return complaint(cli, c);
    if (idx >= 0) {
        char name[NAME_MAX_LEN + 8];
        element_name(matched_element(cli, &cli->opts[idx]), name, sizeof name);
        if (strncmp(name, "--", 2) != 0 || strcmp(name + 2, cli->opts[idx].name) != 0) {
            snprintf(cli->msg, sizeof cli->msg, "unknown option %s (did you mean --%s?)", name, cli->opts[idx].name);
            return CDS_CLI_BAD;
        }
    }
    cli->arg = optarg;
    return c;
}

/* "PROG: what (see HELP)" as one line: newlines in what become spaces. */
static int print_usage_line(const cds_cli *cli, const char *what)
{
    char line[CDS_CLI_LINE_MAX + 128];
    if (cli->help)
        snprintf(line, sizeof line, "%s: %s (see %s)", cli->prog, what, cli->help);
    else
        snprintf(line, sizeof line, "%s: %s (see %s --help)", cli->prog, what, cli->prog);
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fflush(stdout);
    fprintf(stderr, "%s\n", line);
    return 2;
}

int cds_cli_fail(const cds_cli *cli)
{
    return print_usage_line(cli, cli->msg[0] ? cli->msg : "bad usage");
}

int cds_cli_usage(const cds_cli *cli, const char *fmt, ...)
{
    char what[CDS_CLI_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return print_usage_line(cli, what);
}
