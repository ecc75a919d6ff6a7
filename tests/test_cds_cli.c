/* test_cds_cli: common/cds_cli, the option parser of every tool.
 *
 * Each case scans an argv with one option table (that of a trainer: --epochs,
 * --data, --json, -h) and checks what cds_cli_next returns and the message:
 * exact names pass with their values in every spelling getopt_long knows;
 * an abbreviation getopt_long would take ("--epoch" for --epochs) is refused,
 * naming the full option; an unknown name near a real one gets a
 * suggestion, one far from all gets none; a missing value and a value given
 * to a flag are told apart; the value of a refused option is never in the
 * message.  The tools' own use of it is tested by tests/test_cli.sh. */
#include <string.h>

#include "cds_cli.h"
#include "tap.h"

enum { O_EPOCHS = 300, O_DATA, O_JSON, O_REDIS_PW };

static const struct option opts[] = {
    {"epochs", required_argument, 0, O_EPOCHS}, {"data", required_argument, 0, O_DATA},
    {"json", no_argument, 0, O_JSON},           {"redis-password-file", required_argument, 0, O_REDIS_PW},
    {0, 0, 0, 0},
};

/* Scans argv (NULL-terminated, argv[0] the program) to its first refusal or
 * its end; returns the last code and copies the message into msg. */
static int scan(const char **args, char *msg, size_t n, int *n_opts, const char **last_arg)
{
    char *argv[16];
    int argc = 0;
    for (; args[argc]; argc++)
        argv[argc] = (char *)args[argc];
    argv[argc] = NULL;
    cds_cli cli;
    cds_cli_init(&cli, "prog", NULL, argc, argv, "h", opts);
    int c;
    *n_opts = 0;
    while ((c = cds_cli_next(&cli)) >= 0) {
        (*n_opts)++;
        *last_arg = cli.arg;
    }
    snprintf(msg, n, "%s", cli.msg);
    return c;
}

int main(void)
{
    char msg[CDS_CLI_MSG_MAX];
    int n = 0;
    const char *arg = NULL;

    const char *exact[] = {"prog", "--epochs", "3", "--data=d", "--json", "-h", "x", NULL};
    int rc = scan(exact, msg, sizeof msg, &n, &arg);
    ok(rc == CDS_CLI_END && n == 4, "exact names pass: --epochs 3, --data=d, --json, -h (%d options)", n);
    const char *value[] = {"prog", "--epochs=7", NULL};
    rc = scan(value, msg, sizeof msg, &n, &arg);
    ok(rc == CDS_CLI_END && arg && strcmp(arg, "7") == 0,
       "the value of --epochs=7 is cli.arg");

    const char *abbrev[] = {"prog", "--epoch", "3", NULL};
    rc = scan(abbrev, msg, sizeof msg, &n, &arg);
    ok(rc == CDS_CLI_BAD &&
           strcmp(msg, "unknown option --epoch (did you mean --epochs?)") == 0,
       "--epoch is refused, naming --epochs: %s", msg);
    const char *abbrev_eq[] = {"prog", "--redis-pass=SECRET", NULL};
    rc = scan(abbrev_eq, msg, sizeof msg, &n, &arg);
    ok(rc == CDS_CLI_BAD && strstr(msg, "--redis-password-file") &&
           !strstr(msg, "SECRET"),
       "--redis-pass=SECRET is refused, naming the option, without the value: %s", msg);
    const char *abbrev_sp[] = {"prog", "--redis-pass", "SECRET", NULL};
    rc = scan(abbrev_sp, msg, sizeof msg, &n, &arg);
    ok(rc == CDS_CLI_BAD &&
           strncmp(msg, "unknown option --redis-pass ", 28) == 0 && !strstr(msg, "SECRET"),
       "--redis-pass SECRET is refused without the value: %s", msg);

    const char *typo[] = {"prog", "--epcohs", "3", NULL};
    rc = scan(typo, msg, sizeof msg, &n, &arg);
    ok(rc == CDS_CLI_BAD &&
           strcmp(msg, "unknown option --epcohs (did you mean --epochs?)") == 0,
       "a misspelt name near a real one gets a suggestion: %s", msg);
    const char *far[] = {"prog", "--bogus", NULL};
    rc = scan(far, msg, sizeof msg, &n, &arg);
    ok(rc == CDS_CLI_BAD && strcmp(msg, "unknown option --bogus") == 0,
       "a name far from every option gets none: %s", msg);
    const char *shortx[] = {"prog", "-x", NULL};
    rc = scan(shortx, msg, sizeof msg, &n, &arg);
    ok(rc == CDS_CLI_BAD && strcmp(msg, "unknown option -x") == 0,
       "an unknown short option: %s", msg);

    const char *missing[] = {"prog", "--epochs", NULL};
    rc = scan(missing, msg, sizeof msg, &n, &arg);
    ok(rc == CDS_CLI_BAD && strcmp(msg, "option --epochs needs a value") == 0,
       "a missing value: %s", msg);
    const char *flagval[] = {"prog", "--json=1", NULL};
    rc = scan(flagval, msg, sizeof msg, &n, &arg);
    ok(rc == CDS_CLI_BAD && strcmp(msg, "option --json takes no value") == 0,
       "a value given to a flag: %s", msg);

    const char *dashdash[] = {"prog", "--", "--epoch", NULL};
    rc = scan(dashdash, msg, sizeof msg, &n, &arg);
    ok(rc == CDS_CLI_END && n == 0, "after --, nothing is an option");

    ok(cds_cli_suggest(opts, "--dat") && strcmp(cds_cli_suggest(opts, "--dat"), "data") == 0,
       "suggest: a prefix names its option");
    ok(cds_cli_suggest(opts, "--x") == NULL, "suggest: nothing for a name near nothing");
    return tap_done();
}
