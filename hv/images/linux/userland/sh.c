/* The shell: line editing, history, tab completion, quoting, $VAR, ; && || | & < > >> 2>.
 *
 * Editing keys: Left/Right, Home/End (Ctrl-A/E), Up/Down (history), Backspace, Delete,
 * Ctrl-U/K (kill to start/end), Ctrl-W (kill word), Ctrl-L (clear), Ctrl-C (cancel line),
 * Ctrl-D (on an empty line: exit), Tab (complete commands and file names).
 * Applets run in a forked child (so Ctrl-C stops them, not the shell); a word with a '/'
 * is executed as a program; "exec PROG ARGS" replaces the shell.
 */
#include "hv.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define MAXLINE 1024
#define MAXTOK 128
#define MAXCMDS 8
#define HISTORY 64

enum { T_WORD, T_SEMI, T_AND, T_OR, T_PIPE, T_BG, T_GT, T_GTGT, T_LT, T_ERRGT, T_END };

struct tok {
    int type;
    char *s;
};

struct cmd {
    char *argv[MAXTOK + 1];
    int argc;
    char *in, *out, *err;
    int append;
};

static const char *const builtins[] = {"cd", "pwd", "exit", "exec", "export", "unset",
                                       "history", "time", NULL};

static int g_status;
static int g_tty;            /* stdin is a terminal with us in its foreground group */
static struct termios g_cooked;
static char *g_hist[HISTORY];
static int g_hist_n;

/* ------------------------------------------------------------------ terminal */

static void out(const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(1, s, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR)
                continue;
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

static void outs(const char *s)
{
    out(s, strlen(s));
}

static void raw_mode(int on)
{
    if (!g_tty)
        return;
    if (!on) {
        tcsetattr(0, TCSADRAIN, &g_cooked);
        return;
    }
    struct termios t = g_cooked;
    t.c_iflag &= ~(tcflag_t)(ICRNL | INLCR | IGNCR | IXON | ISTRIP);
    t.c_lflag &= ~(tcflag_t)(ICANON | ECHO | ISIG | IEXTEN);
    t.c_oflag |= OPOST | ONLCR;
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    tcsetattr(0, TCSADRAIN, &t);
}

static void prompt_string(char *buf, size_t n)
{
    char host[65] = "hv", cwd[PATH_MAX];
    gethostname(host, sizeof host - 1);
    if (!getcwd(cwd, sizeof cwd))
        snprintf(cwd, sizeof cwd, "?");
    snprintf(buf, n, "%s:%s# ", host, cwd);
}

/* ------------------------------------------------------------------ line editor */

struct editor {
    char buf[MAXLINE];
    size_t len, pos;
    const char *prompt;
};

static void redraw(struct editor *e)
{
    char seq[32];
    outs("\r");
    outs(e->prompt);
    out(e->buf, e->len);
    outs("\x1b[K");
    if (e->len > e->pos) {
        snprintf(seq, sizeof seq, "\x1b[%zuD", e->len - e->pos);
        outs(seq);
    }
}

static void insert_text(struct editor *e, const char *s, size_t n)
{
    if (e->len + n >= sizeof e->buf)
        n = sizeof e->buf - 1 - e->len;
    memmove(e->buf + e->pos + n, e->buf + e->pos, e->len - e->pos);
    memcpy(e->buf + e->pos, s, n);
    e->len += n;
    e->pos += n;
}

static void delete_range(struct editor *e, size_t from, size_t to)
{
    memmove(e->buf + from, e->buf + to, e->len - to);
    e->len -= to - from;
    e->pos = from;
}

static int is_builtin(const char *name)
{
    for (int i = 0; builtins[i]; i++)
        if (!strcmp(builtins[i], name))
            return 1;
    return 0;
}

/* Candidates for the word before the cursor: commands for the first word, else files. */
static void complete(struct editor *e)
{
    size_t start = e->pos;
    while (start > 0 && e->buf[start - 1] != ' ' && e->buf[start - 1] != '|' &&
           e->buf[start - 1] != ';' && e->buf[start - 1] != '&')
        start--;
    size_t first = 0;
    while (first < start && e->buf[first] == ' ')
        first++;
    int command = 1;
    for (size_t i = first; i < start; i++)
        if (e->buf[i] != ' ')
            command = 0;
    for (size_t i = start; i-- > 0;) {
        if (e->buf[i] == '|' || e->buf[i] == ';' || e->buf[i] == '&') {
            command = 1;
            for (size_t j = i + 1; j < start; j++)
                if (e->buf[j] != ' ')
                    command = 0;
            break;
        }
    }
    char word[256];
    snprintf(word, sizeof word, "%.*s", (int)(e->pos - start), e->buf + start);
    static char cands[256][64];
    int n = 0;
    char dir[256] = ".", prefix[256];
    const char *base = word;
    if (command && !strchr(word, '/')) {
        for (const struct applet *a = applets; a->name && n < 256; a++)
            if (!strncmp(a->name, word, strlen(word)))
                snprintf(cands[n++], sizeof cands[0], "%s ", a->name);
        for (int i = 0; builtins[i] && n < 256; i++)
            if (!strncmp(builtins[i], word, strlen(word)))
                snprintf(cands[n++], sizeof cands[0], "%s ", builtins[i]);
        prefix[0] = 0;
    } else {
        char *slash = strrchr(word, '/');
        if (slash) {
            snprintf(dir, sizeof dir, "%.*s", (int)(slash - word + 1), word);
            base = slash + 1;
        }
        snprintf(prefix, sizeof prefix, "%s", slash ? dir : "");
        DIR *d = opendir(dir);
        struct dirent *de;
        while (d && (de = readdir(d)) && n < 256) {
            if (strncmp(de->d_name, base, strlen(base)) ||
                (de->d_name[0] == '.' && base[0] != '.'))
                continue;
            char path[600];
            struct stat st;
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            int isdir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
            snprintf(cands[n++], sizeof cands[0], "%s%s", de->d_name, isdir ? "/" : " ");
        }
        if (d)
            closedir(d);
    }
    if (n == 0)
        return;
    /* longest common prefix of the candidates */
    size_t common = strlen(cands[0]);
    for (int i = 1; i < n; i++) {
        size_t k = 0;
        while (k < common && cands[i][k] == cands[0][k])
            k++;
        common = k;
    }
    size_t have = strlen(base);
    if (n == 1 || common > have) {
        if (n > 1 && common > 0 && cands[0][common - 1] == ' ')
            common--;
        insert_text(e, cands[0] + have, common - have);
        redraw(e);
        return;
    }
    outs("\r\n");
    for (int i = 0; i < n; i++) {
        outs(prefix);
        outs(cands[i]);
        outs(i % 4 == 3 || i == n - 1 ? "\r\n" : "\t");
    }
    redraw(e);
}

static void history_add(const char *line)
{
    if (!line[0] || (g_hist_n && !strcmp(g_hist[(g_hist_n - 1) % HISTORY], line)))
        return;
    free(g_hist[g_hist_n % HISTORY]);
    g_hist[g_hist_n % HISTORY] = strdup(line);
    g_hist_n++;
}

static int read_byte(char *c)
{
    for (;;) {
        ssize_t n = read(0, c, 1);
        if (n == 1)
            return 1;
        if (n < 0 && errno == EINTR)
            continue;
        return 0;
    }
}

/* Read one line: 1 on a line, 0 on end of input. */
static int read_line(const char *prompt, char *line, size_t size)
{
    if (!g_tty) {
        size_t n = 0;
        char c;
        int got = 0;
        while (read_byte(&c)) {
            got = 1;
            if (c == '\n')
                break;
            if (n + 1 < size)
                line[n++] = c;
        }
        line[n] = 0;
        return got;
    }
    static int after_cr;
    struct editor e = {.len = 0, .pos = 0, .prompt = prompt};
    int hist_pos = g_hist_n;
    char saved[MAXLINE] = "";
    raw_mode(1);
    outs(prompt);
    for (;;) {
        char c;
        if (!read_byte(&c)) {
            raw_mode(0);
            return 0;
        }
        if (c == '\n' && after_cr) { /* CR LF from a terminal program: one Enter */
            after_cr = 0;
            continue;
        }
        after_cr = c == '\r';
        if (c == '\r' || c == '\n') {
            outs("\r\n");
            break;
        }
        switch (c) {
        case 1: e.pos = 0; break;                  /* Ctrl-A */
        case 5: e.pos = e.len; break;              /* Ctrl-E */
        case 2: if (e.pos) e.pos--; break;         /* Ctrl-B */
        case 6: if (e.pos < e.len) e.pos++; break; /* Ctrl-F */
        case 3:                                    /* Ctrl-C */
            outs("^C\r\n");
            e.len = e.pos = 0;
            outs(prompt);
            continue;
        case 4:                                    /* Ctrl-D */
            if (e.len == 0) {
                outs("exit\r\n");
                raw_mode(0);
                return 0;
            }
            if (e.pos < e.len)
                delete_range(&e, e.pos, e.pos + 1);
            break;
        case 8: case 127:                          /* Backspace */
            if (e.pos && e.pos == e.len) {
                delete_range(&e, e.pos - 1, e.pos);
                outs("\b \b");                   /* plain echo, no redraw */
                continue;
            }
            if (e.pos)
                delete_range(&e, e.pos - 1, e.pos);
            break;
        case 11: e.len = e.pos; break;             /* Ctrl-K */
        case 21: delete_range(&e, 0, e.pos); break; /* Ctrl-U */
        case 23: {                                 /* Ctrl-W */
            size_t p = e.pos;
            while (p && e.buf[p - 1] == ' ')
                p--;
            while (p && e.buf[p - 1] != ' ')
                p--;
            delete_range(&e, p, e.pos);
            break;
        }
        case 12: outs("\x1b[H\x1b[2J"); break;     /* Ctrl-L */
        case '\t': complete(&e); continue;
        case 27: {                                 /* escape sequences */
            char s1, s2, s3;
            if (!read_byte(&s1) || (s1 != '[' && s1 != 'O') || !read_byte(&s2))
                break;
            if (s2 >= '0' && s2 <= '9') {
                if (!read_byte(&s3) || s3 != '~')
                    break;
                if (s2 == '3' && e.pos < e.len)
                    delete_range(&e, e.pos, e.pos + 1);
                else if (s2 == '1' || s2 == '7')
                    e.pos = 0;
                else if (s2 == '4' || s2 == '8')
                    e.pos = e.len;
                break;
            }
            if (s2 == 'D' || s2 == 'C') {
                if (s2 == 'D' && e.pos) {
                    e.pos--;
                    outs("\x1b[D");
                } else if (s2 == 'C' && e.pos < e.len) {
                    e.pos++;
                    outs("\x1b[C");
                }
                continue;
            }
            if (s2 == 'H')
                e.pos = 0;
            else if (s2 == 'F')
                e.pos = e.len;
            else if (s2 == 'A' || s2 == 'B') {
                int oldest = g_hist_n > HISTORY ? g_hist_n - HISTORY : 0;
                if (hist_pos == g_hist_n)
                    snprintf(saved, sizeof saved, "%.*s", (int)e.len, e.buf);
                if (s2 == 'A' && hist_pos > oldest)
                    hist_pos--;
                else if (s2 == 'B' && hist_pos < g_hist_n)
                    hist_pos++;
                else
                    break;
                const char *h = hist_pos == g_hist_n ? saved : g_hist[hist_pos % HISTORY];
                e.len = e.pos = 0;
                insert_text(&e, h, strlen(h));
            }
            break;
        }
        default:
            if ((unsigned char)c < 32)
                continue;
            if (e.pos == e.len && e.len + 1 < sizeof e.buf) {
                insert_text(&e, &c, 1);
                out(&c, 1);                        /* typing at the end: plain echo */
                continue;
            }
            insert_text(&e, &c, 1);
        }
        redraw(&e);
    }
    raw_mode(0);
    e.buf[e.len] = 0;
    snprintf(line, size, "%s", e.buf);
    history_add(line);
    return 1;
}

/* ------------------------------------------------------------------ parsing */

static int tokenize(const char *p, struct tok *toks, char *store, size_t storesz)
{
    int n = 0;
    char *w = store, *end = store + storesz - 1;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p || *p == '#')
            break;
        if (n >= MAXTOK) {
            errorf("sh: too many words");
            return -1;
        }
        static const struct { const char *s; int t; } ops[] = {
            {"&&", T_AND}, {"||", T_OR}, {">>", T_GTGT}, {"2>", T_ERRGT}, {";", T_SEMI},
            {"|", T_PIPE}, {"&", T_BG}, {">", T_GT}, {"<", T_LT},
        };
        int matched = 0;
        for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
            size_t l = strlen(ops[i].s);
            if (!strncmp(p, ops[i].s, l)) {
                toks[n++] = (struct tok){ops[i].t, NULL};
                p += l;
                matched = 1;
                break;
            }
        }
        if (matched)
            continue;
        toks[n].type = T_WORD;
        toks[n].s = w;
        char quote = 0;
        while (*p && (quote || !strchr(" \t;&|<>", *p))) {
            if (w >= end - 16) {
                errorf("sh: line too long");
                return -1;
            }
            if (quote == '\'' ) {
                if (*p == '\'')
                    quote = 0;
                else
                    *w++ = *p;
                p++;
            } else if (*p == '\'' || *p == '"') {
                if (quote == *p)
                    quote = 0;
                else if (!quote)
                    quote = *p;
                else
                    *w++ = *p;
                p++;
            } else if (*p == '\\' && p[1]) {
                *w++ = p[1];
                p += 2;
            } else if (*p == '$' && (p[1] == '?' || p[1] == '$' || p[1] == '{' ||
                                     p[1] == '_' || (p[1] >= 'A' && p[1] <= 'Z') ||
                                     (p[1] >= 'a' && p[1] <= 'z'))) {
                char name[64], val[32];
                const char *v;
                size_t k = 0;
                p++;
                if (*p == '?' || *p == '$') {
                    snprintf(val, sizeof val, "%d", *p == '?' ? g_status : (int)getpid());
                    v = val;
                    p++;
                } else {
                    int brace = *p == '{';
                    p += brace;
                    while (k + 1 < sizeof name && (*p == '_' || (*p >= 'A' && *p <= 'Z') ||
                                                   (*p >= 'a' && *p <= 'z') ||
                                                   (*p >= '0' && *p <= '9')))
                        name[k++] = *p++;
                    name[k] = 0;
                    if (brace && *p == '}')
                        p++;
                    v = getenv(name);
                }
                for (; v && *v && w < end - 16; v++)
                    *w++ = *v;
            } else {
                *w++ = *p++;
            }
        }
        if (quote) {
            errorf("sh: unterminated %c", quote);
            return -1;
        }
        *w++ = 0;
        n++;
    }
    toks[n] = (struct tok){T_END, NULL};
    return n;
}

/* ------------------------------------------------------------------ execution */

static void child_signals(void)
{
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    signal(SIGTSTP, SIG_DFL);
    signal(SIGTTIN, SIG_DFL);
    signal(SIGTTOU, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
}

static int redirect(const char *path, int fd, int flags)
{
    int f = open(path, flags | O_CLOEXEC, 0644);
    if (f < 0) {
        errorf("sh: %s: %s", path, strerror(errno));
        return -1;
    }
    dup2(f, fd);
    close(f);
    return 0;
}

static const char *find_program(const char *name, char *buf, size_t n)
{
    if (strchr(name, '/'))
        return name;
    const char *path = getenv("PATH");
    char copy[512];
    snprintf(copy, sizeof copy, "%s", path ? path : "/bin");
    for (char *dir = strtok(copy, ":"); dir; dir = strtok(NULL, ":")) {
        snprintf(buf, n, "%s/%s", dir, name);
        if (access(buf, X_OK) == 0)
            return buf;
    }
    return NULL;
}

/* In a child: redirections, then the applet or the program. Never returns. */
static void exec_command(struct cmd *c)
{
    if ((c->in && redirect(c->in, 0, O_RDONLY) < 0) ||
        (c->out && redirect(c->out, 1, O_WRONLY | O_CREAT | (c->append ? O_APPEND : O_TRUNC)) < 0) ||
        (c->err && redirect(c->err, 2, O_WRONLY | O_CREAT | O_TRUNC) < 0))
        _exit(1);
    const struct applet *a = strchr(c->argv[0], '/') ? NULL : find_applet(c->argv[0]);
    if (a && strcmp(a->name, "sh") && strcmp(a->name, "init")) {
        prctl(PR_SET_NAME, a->name, 0, 0, 0); /* ps shows the applet, not "sh" */
        int rc = a->fn(c->argc, c->argv);
        fflush(NULL);
        _exit(rc);
    }
    char buf[PATH_MAX];
    const char *prog = find_program(c->argv[0], buf, sizeof buf);
    if (prog)
        execv(prog, c->argv);
    errorf("sh: %s: %s", c->argv[0], prog ? strerror(errno) : "command not found");
    _exit(prog && errno != ENOENT ? 126 : 127);
}

static void reap_background(void)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        if (WIFEXITED(st))
            printf("[%d] done, exit %d\n", (int)pid, WEXITSTATUS(st));
        else if (WIFSIGNALED(st))
            printf("[%d] killed by signal %d\n", (int)pid, WTERMSIG(st));
    }
    fflush(stdout);
}

static int status_of(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) {
        int sig = WTERMSIG(st);
        if (sig == SIGINT)
            fputc('\n', stderr);
        else if (sig != SIGPIPE)
            fprintf(stderr, "%s\n", strsignal(sig));
        return 128 + sig;
    }
    return 1;
}

static int run_builtin(struct cmd *c, int *handled);

static int run_pipeline(struct cmd *cmds, int n, int background)
{
    if (n == 1 && !background && !cmds[0].in && !cmds[0].out) {
        int handled = 0;
        int rc = run_builtin(&cmds[0], &handled);
        if (handled)
            return rc;
    }
    pid_t pids[MAXCMDS], pgid = 0;
    int prev_read = -1;
    fflush(NULL);
    for (int i = 0; i < n; i++) {
        int pfd[2] = {-1, -1};
        if (i + 1 < n && pipe2(pfd, O_CLOEXEC) < 0) {
            errorf("sh: pipe: %s", strerror(errno));
            return 1;
        }
        pid_t pid = fork();
        if (pid < 0) {
            errorf("sh: fork: %s", strerror(errno));
            return 1;
        }
        if (pid == 0) {
            setpgid(0, pgid);
            if (g_tty && !background && i == 0)
                tcsetpgrp(0, getpid());
            child_signals();
            if (background && prev_read < 0 && !cmds[i].in) {
                int nul = open("/dev/null", O_RDONLY);
                if (nul >= 0) {
                    dup2(nul, 0);
                    close(nul);
                }
            }
            if (prev_read >= 0)
                dup2(prev_read, 0);
            if (pfd[1] >= 0)
                dup2(pfd[1], 1);
            exec_command(&cmds[i]);
        }
        if (!pgid)
            pgid = pid;
        setpgid(pid, pgid);
        pids[i] = pid;
        if (prev_read >= 0)
            close(prev_read);
        if (pfd[1] >= 0)
            close(pfd[1]);
        prev_read = pfd[0];
    }
    if (background) {
        printf("[%d]\n", (int)pids[n - 1]);
        return 0;
    }
    if (g_tty)
        tcsetpgrp(0, pgid);
    int st = 0, rc = 0;
    for (int i = 0; i < n; i++) {
        while (waitpid(pids[i], &st, 0) < 0 && errno == EINTR) {
        }
        if (i == n - 1)
            rc = status_of(st);
    }
    if (g_tty)
        tcsetpgrp(0, getpgrp());
    return rc;
}

/* Run one pipeline's tokens (words, |, redirections). */
static int run_segment(struct tok *t, int ntok, int background)
{
    struct cmd cmds[MAXCMDS];
    int n = 0;
    memset(&cmds[0], 0, sizeof cmds[0]);
    for (int i = 0; i < ntok;) {
        struct tok *k = &t[i];
        struct cmd *c = &cmds[n];
        if (k->type == T_WORD) {
            if (c->argc < MAXTOK)
                c->argv[c->argc++] = k->s;
            i++;
        } else if (k->type == T_GT || k->type == T_GTGT || k->type == T_LT ||
                   k->type == T_ERRGT) {
            if (t[i + 1].type != T_WORD) {
                errorf("sh: syntax error: missing file name after redirection");
                return 2;
            }
            if (k->type == T_LT)
                c->in = t[i + 1].s;
            else if (k->type == T_ERRGT)
                c->err = t[i + 1].s;
            else {
                c->out = t[i + 1].s;
                c->append = k->type == T_GTGT;
            }
            i += 2;
        } else if (k->type == T_PIPE) {
            if (!c->argc || n + 1 >= MAXCMDS) {
                errorf("sh: syntax error near '|'");
                return 2;
            }
            n++;
            memset(&cmds[n], 0, sizeof cmds[n]);
            i++;
        } else {
            errorf("sh: syntax error");
            return 2;
        }
    }
    if (!cmds[n].argc) {
        if (n || background) {
            errorf("sh: syntax error: empty command");
            return 2;
        }
        return g_status;
    }
    for (int j = 0; j <= n; j++)
        cmds[j].argv[cmds[j].argc] = NULL;
    return run_pipeline(cmds, n + 1, background);
}

/* Split the line at top-level ; && || & and run each part in turn, so that $? in a later
 * part sees the status of the earlier ones. */
static int run_line(const char *line)
{
    const char *p = line;
    int skip = 0;
    while (*p) {
        const char *q = p;
        char quote = 0;
        int comment = 0;
        while (*q) {
            if (quote) {
                if (*q == quote)
                    quote = 0;
                else if (*q == '\\' && quote == '"' && q[1])
                    q++;
                q++;
                continue;
            }
            if (*q == '\'' || *q == '"') {
                quote = *q++;
                continue;
            }
            if (*q == '\\' && q[1]) {
                q += 2;
                continue;
            }
            if (*q == '#' && (q == line || q[-1] == ' ' || q[-1] == '\t')) {
                comment = 1;
                break;
            }
            if (*q == ';' || *q == '&' || (*q == '|' && q[1] == '|'))
                break;
            q++;
        }
        int sep = T_END;
        size_t seplen = 0;
        if (*q && !comment) {
            if (*q == ';')
                sep = T_SEMI, seplen = 1;
            else if (q[0] == '&' && q[1] == '&')
                sep = T_AND, seplen = 2;
            else if (*q == '&')
                sep = T_BG, seplen = 1;
            else
                sep = T_OR, seplen = 2;
        }
        if (!skip) {
            char seg[MAXLINE * 2], store[MAXLINE * 4];
            struct tok toks[MAXTOK + 1];
            snprintf(seg, sizeof seg, "%.*s", (int)(q - p), p);
            int n = tokenize(seg, toks, store, sizeof store);
            if (n < 0)
                return g_status = 2;
            if (n == 0 && (sep == T_AND || sep == T_OR || sep == T_BG)) {
                errorf("sh: syntax error: empty command");
                return g_status = 2;
            }
            if (n > 0)
                g_status = run_segment(toks, n, sep == T_BG);
        }
        skip = (sep == T_AND && g_status != 0) || (sep == T_OR && g_status == 0);
        if (comment || !*q)
            break;
        p = q + seplen;
    }
    return g_status;
}

static int run_builtin(struct cmd *c, int *handled)
{
    char **argv = c->argv;
    int argc = c->argc;
    *handled = 1;
    if (strchr(argv[0], '=') && argv[0][0] != '=' && argc == 1) {
        char *eq = strchr(argv[0], '=');
        *eq = 0;
        setenv(argv[0], eq + 1, 1);
        *eq = '=';
        return 0;
    }
    if (!strcmp(argv[0], "cd")) {
        const char *dir = argc > 1 ? argv[1] : getenv("HOME");
        if (chdir(dir ? dir : "/") < 0) {
            errorf("cd: %s: %s", dir, strerror(errno));
            return 1;
        }
        return 0;
    }
    if (!strcmp(argv[0], "pwd")) {
        char cwd[PATH_MAX];
        printf("%s\n", getcwd(cwd, sizeof cwd) ? cwd : "?");
        return 0;
    }
    if (!strcmp(argv[0], "exit")) {
        fflush(NULL);
        exit(argc > 1 ? atoi(argv[1]) : g_status);
    }
    if (!strcmp(argv[0], "exec")) {
        if (argc < 2)
            return 0;
        char buf[PATH_MAX];
        const char *prog = find_program(argv[1], buf, sizeof buf);
        fflush(NULL);
        if (prog)
            execv(prog, argv + 1);
        errorf("exec: %s: %s", argv[1], prog ? strerror(errno) : "not found");
        return 127;
    }
    if (!strcmp(argv[0], "export")) {
        for (int i = 1; i < argc; i++) {
            char *eq = strchr(argv[i], '=');
            if (eq) {
                *eq = 0;
                setenv(argv[i], eq + 1, 1);
                *eq = '=';
            }
        }
        if (argc == 1) {
            extern char **environ;
            for (char **e = environ; *e; e++)
                printf("%s\n", *e);
        }
        return 0;
    }
    if (!strcmp(argv[0], "unset")) {
        for (int i = 1; i < argc; i++)
            unsetenv(argv[i]);
        return 0;
    }
    if (!strcmp(argv[0], "history")) {
        int oldest = g_hist_n > HISTORY ? g_hist_n - HISTORY : 0;
        for (int i = oldest; i < g_hist_n; i++)
            printf("%4d  %s\n", i + 1, g_hist[i % HISTORY]);
        return 0;
    }
    if (!strcmp(argv[0], "time")) {
        if (argc < 2)
            return 0;
        /* re-run the rest of the words as one command line, timed */
        char line[MAXLINE * 2] = "";
        size_t off = 0;
        for (int i = 1; i < argc && off < sizeof line - 4; i++) {
            int w = snprintf(line + off, sizeof line - off, "'%s' ", argv[i]);
            if (w < 0)
                break;
            off += (size_t)w;
        }
        uint64_t t0 = now_ns();
        int rc = run_line(line);
        fprintf(stderr, "real %.3f s\n", (double)(now_ns() - t0) / 1e9);
        return rc;
    }
    *handled = 0;
    return 0;
}

int sh_builtin_help(int argc, char **argv)
{
    if (argc > 1) {
        if (!strcmp(argv[1], "traffic")) {
            char *a[] = {"traffic", NULL};
            return ap_traffic(1, a);
        }
        const struct applet *a = find_applet(argv[1]);
        if (a) {
            printf("%s %s\n", a->name, a->usage);
            return 0;
        }
        if (is_builtin(argv[1])) {
            printf("%s: shell builtin\n", argv[1]);
            return 0;
        }
        errorf("help: no such command: %s", argv[1]);
        return 1;
    }
    printf("commands:\n");
    for (const struct applet *a = applets; a->name; a++)
        if (strcmp(a->name, "init"))
            printf("  %-9s %s\n", a->name, a->usage);
    printf("builtins: ");
    for (int i = 0; builtins[i]; i++)
        printf("%s ", builtins[i]);
    printf("\nsyntax: 'quotes' \"$VAR\" $? ; && || | & < > >> 2>  # comment   (Tab completes)\n");
    printf("  /path/to/prog ARGS runs a program; exec PROG replaces the shell\n");
    return 0;
}

int sh_main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "-c")) {
        signal(SIGPIPE, SIG_DFL);
        return run_line(argv[2]);
    }
    if (argc >= 2) { /* sh SCRIPT: run its lines */
        int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            errorf("sh: %s: %s", argv[1], strerror(errno));
            return 127;
        }
        dup2(fd, 0);
        close(fd);
    }
    g_tty = argc < 2 && isatty(0) && tcgetattr(0, &g_cooked) == 0;
    if (g_tty) {
        signal(SIGINT, SIG_IGN);
        signal(SIGQUIT, SIG_IGN);
        signal(SIGTSTP, SIG_IGN);
        signal(SIGTTIN, SIG_IGN);
        signal(SIGTTOU, SIG_IGN);
        if (getpgrp() != getpid())
            setpgid(0, 0);
        if (tcsetpgrp(0, getpgrp()) < 0)
            g_tty = 1; /* no job control (e.g. /dev/console): editing still works */
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    char line[MAXLINE], prompt[PATH_MAX + 80];
    for (;;) {
        reap_background();
        prompt_string(prompt, sizeof prompt);
        if (!read_line(g_tty ? prompt : "", line, sizeof line))
            break;
        run_line(line);
        fflush(NULL);
    }
    return g_status;
}
