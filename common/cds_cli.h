/* cds_cli: the command-line options of every Cerebro-DS program, parsed one
 * way and refused in one style.
 *
 * It wraps getopt_long (so "--name value", "--name=value", "--" and argument
 * permutation work as everywhere) and adds what getopt_long lacks:
 *   - option names are exact: getopt_long takes any unambiguous prefix
 *     ("--epoch" for --epochs, "--redis-pass" for --redis-password-file);
 *     cds_cli refuses it, naming the full option, so a misspelt option never
 *     quietly takes a value meant for another (a password as a file name);
 *   - every complaint is one line, "PROG: <what> (<fix>)", where the fix is
 *     "did you mean --X?" when a name is close to a real one, and the help
 *     to read ("see PROG --help") always;
 *   - the value of a refused option is never echoed (it may be a secret):
 *     only the name before any '=' is.
 *
 * Use: cds_cli_init(), then cds_cli_next() until CDS_CLI_END; the value of
 * the option returned is cli->arg, and optind is the first argument left
 * (getopt's optind and optarg are the only shared state, as with getopt).
 * CDS_CLI_BAD means cli->msg says what was wrong; cds_cli_fail() prints it.
 * cds_cli_usage() prints any other usage error in the same style. */
#ifndef CDS_CLI_H
#define CDS_CLI_H

#include <getopt.h>

#define CDS_CLI_END (-1) /* no options left */
#define CDS_CLI_BAD (-3) /* cli->msg says why */

#define CDS_CLI_MSG_MAX 256

typedef struct cds_cli {
    const char *prog;                 /* "cds-train": the start of every message */
    const char *help;                 /* "cds-train --help": the help a usage error points at */
    int argc;
    char **argv;
    char shortopts[64];               /* ':' first, so a missing value is told apart */
    const struct option *opts;
    const char *arg;                  /* the value of the option just returned, or NULL */
    char msg[CDS_CLI_MSG_MAX];        /* why CDS_CLI_BAD */
} cds_cli;

/* Starts a fresh scan of argv[1..] (optind reset).  shortopts are
 * getopt's ("h" for -h; a leading '+' stops at the first non-option); opts
 * ends with a zero entry.  help may be NULL ("PROG --help"). */
void cds_cli_init(cds_cli *cli, const char *prog, const char *help, int argc, char **argv, const char *shortopts,
                  const struct option *opts);
/* The next option's val, CDS_CLI_END, or CDS_CLI_BAD (cli->msg set: an
 * unknown or abbreviated option, a missing value, a value given to an
 * option that takes none). */
int cds_cli_next(cds_cli *cli);
/* Prints "PROG: <cli->msg> (see HELP)" as one line on stderr; returns 2. */
int cds_cli_fail(const cds_cli *cli);
/* Prints "PROG: <what> (see HELP)" as one line on stderr; returns 2.  The
 * format takes printf arguments. */
int cds_cli_usage(const cds_cli *cli, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The closest option name to name ("--epoch"): one that name is a prefix
 * of, else one it differs from by at most two edits; NULL if none. */
const char *cds_cli_suggest(const struct option *opts, const char *name);

#endif
