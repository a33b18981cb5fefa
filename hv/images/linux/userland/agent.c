/* hv-agent: runs commands and moves files for the host (hv exec, hv cp, vm.exec()).
 *
 * It listens on AF_VSOCK port HV_AGENT_PORT (any CID), or on a Unix socket with -u PATH (how
 * the host's tests drive it). Each connection carries one request, then the answer streams
 * back; the connection ends with the request. One process serves every connection with a
 * poll loop (no process per request: a fork, its copy-on-write faults and its exit cost a
 * guest more than the command itself), and starts commands with posix_spawn (musl's shares
 * the agent's memory until the exec: no page tables copied, no faults). The protocol
 * (docs/EXEC.md, hv/_exec.py) is binary frames:
 *
 *     u8 type, u32 length (big-endian), length bytes of payload      (length <= HV_FRAME_MAX)
 *
 * host -> agent: 'X' exec, 'P' put file, 'G' get file (the first frame), then 'i' input
 *                bytes, 'c' end of input, 'w' window size (u16 rows, u16 cols), 'k' signal (u8)
 * agent -> host: 'o' stdout (or a file's bytes), 'e' stderr, 'x' exit (u8 how: 0 exited,
 *                1 killed by a signal; i32 code or signal number), 'r' error (u32 errno,
 *                then a message)
 *
 * Back-pressure both ways, per connection: the sockets are non-blocking; the agent reads a
 * command's output only when the connection has sent the last chunk, and reads the next
 * input frame only when the command has taken the last. So a host that stops reading holds
 * its own command and nobody else's. SIGPIPE is ignored and a host that goes away ends that
 * request (its command is killed, with its session), never the agent. The agent reaps its
 * commands through a signalfd (SIGCHLD blocked); their orphans go to init.
 *
 * agent_boot() is what init calls: it mounts devpts (ptys for 'exec -t') and starts the agent
 * in the background. The agent is not restarted if it dies (kill it and exec says so at once).
 */
#include "hv.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <linux/vm_sockets.h>

#define CHUNK (64 << 10)           /* output read and sent at once */
#define OBUF_CAP (5 + CHUNK + 1024) /* a chunk's frame, and small frames after it */
#define KEEP_IBUF (64 << 10)        /* an input buffer up to this size is kept for the next */
#define MAX_CONNS 64                /* served at once; more wait in the listen backlog */

/* -- frames -------------------------------------------------------------------------- */

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* One connection and its request. */
enum { C_FREE, C_REQ, C_EXEC, C_PUT, C_GET };

struct conn {
    int state;
    int sock;
    /* the host's frame being read: its header, then its payload into ibuf */
    uint8_t head[5];
    uint32_t head_got, len, got;
    uint8_t *ibuf;
    uint32_t icap;
    int held;        /* a whole 'i' frame in ibuf that the command has not taken all of */
    uint32_t in_off; /* how much of it the command took */
    /* to the host: frames not yet sent */
    uint8_t *obuf;
    size_t olen, ooff;
    int closing; /* the answer is complete: close once obuf is sent */
    /* exec */
    pid_t pid;
    int child_done, status;
    int out_r, err_r, in_w, master; /* -1: none (or closed) */
    int draining;                   /* a pty whose command ended: read what is there, then stop */
    /* put and get */
    int fd;
    char *path, *tmp;
    mode_t mode;
    int err;
};

static struct conn g_conns[MAX_CONNS];
static int g_devnull = -1;
static sigset_t g_ignored; /* signals the agent found ignored: the commands get them at default */

static void conn_finish(struct conn *c);

/* Append a frame to the connection's output (small frames, or a chunk into an empty obuf). */
static void queue_frame(struct conn *c, uint8_t type, const void *payload, uint32_t n)
{
    if (c->olen + 5 + n > OBUF_CAP) /* never: callers queue a chunk only into an empty obuf */
        n = (uint32_t)(OBUF_CAP - c->olen - 5);
    uint8_t *p = c->obuf + c->olen;
    p[0] = type;
    put_u32(p + 1, n);
    if (n)
        memmove(p + 5, payload, n);
    c->olen += 5 + (size_t)n;
}

static void queue_error(struct conn *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void queue_error(struct conn *c, int err, const char *fmt, ...)
{
    uint8_t p[512];
    put_u32(p, (uint32_t)err);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf((char *)p + 4, sizeof p - 4, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof p - 5)
        n = sizeof p - 5;
    queue_frame(c, 'r', p, 4 + (uint32_t)n);
    c->closing = 1;
}

static void queue_exit(struct conn *c, int status)
{
    uint8_t p[5];
    int how = WIFSIGNALED(status) ? 1 : 0;
    p[0] = (uint8_t)how;
    put_u32(p + 1, (uint32_t)(how ? WTERMSIG(status) : WEXITSTATUS(status)));
    queue_frame(c, 'x', p, 5);
    c->closing = 1;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* The host went away (or broke the framing): the request ends, its command is killed (its
 * session: a pty's too), a half-written file removed. */
static void conn_abort(struct conn *c)
{
    if (c->state == C_EXEC && !c->child_done && c->pid > 0) {
        kill(-c->pid, SIGKILL);
        kill(c->pid, SIGKILL);
    }
    if (c->state == C_PUT && c->tmp) {
        close_fd(&c->fd);
        unlink(c->tmp);
    }
    conn_finish(c);
}

/* Send what is queued, as far as the socket takes it. -1: the connection is over. */
static int flush(struct conn *c)
{
    while (c->ooff < c->olen) {
        ssize_t w = send(c->sock, c->obuf + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (w <= 0) {
            conn_abort(c);
            return -1;
        }
        c->ooff += (size_t)w;
    }
    c->olen = c->ooff = 0;
    if (c->closing) {
        conn_finish(c);
        return -1;
    }
    return 0;
}

/* -- exec ---------------------------------------------------------------------------- */

struct exec_req {
    int want_stdin, want_tty;
    struct winsize ws;
    const char *cwd;
    char **argv; /* malloc'd, as envp; the strings are the request's */
    char **envp;
};

/* Flags u8 (1 stdin, 2 tty), rows u16, cols u16, argc u16, envc u16, then NUL-ended strings:
 * cwd ("" for none), argv[argc], env[envc] ("KEY=VALUE", added to the agent's own). */
static int parse_exec(uint8_t *p, uint32_t n, struct exec_req *r)
{
    extern char **environ;
    r->argv = r->envp = NULL;
    if (n < 9)
        return -1;
    r->want_stdin = p[0] & 1;
    r->want_tty = (p[0] & 2) != 0;
    memset(&r->ws, 0, sizeof r->ws);
    r->ws.ws_row = get_u16(p + 1);
    r->ws.ws_col = get_u16(p + 3);
    unsigned argc = get_u16(p + 5), envc = get_u16(p + 7);
    if (argc == 0)
        return -1;
    char *s = (char *)p + 9, *end = (char *)p + n;
    size_t base = 0;
    while (environ[base])
        base++;
    r->argv = calloc(argc + 1, sizeof *r->argv);
    r->envp = calloc(base + envc + 1, sizeof *r->envp);
    if (!r->argv || !r->envp)
        return -1;
    char *cwd = NULL, **env = r->envp + base; /* the additions first go after the slots */
    for (unsigned i = 0; i < 1 + argc + envc; i++) {
        char *z = memchr(s, 0, (size_t)(end - s));
        if (!z)
            return -1;
        if (i == 0)
            cwd = s;
        else if (i <= argc)
            r->argv[i - 1] = s;
        else
            env[i - 1 - argc] = s;
        s = z + 1;
    }
    r->cwd = cwd[0] ? cwd : NULL;
    /* env: the agent's, with each addition replacing a variable of the same name */
    size_t k = 0;
    for (size_t i = 0; i < base; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t klen = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        int replaced = 0;
        for (unsigned j = 0; j < envc && !replaced; j++)
            replaced = strncmp(env[j], environ[i], klen) == 0 && env[j][klen] == '=';
        if (!replaced)
            r->envp[k++] = environ[i];
    }
    memmove(r->envp + k, env, envc * sizeof *env);
    r->envp[k + envc] = NULL;
    return 0;
}

/* The program to run: argv[0] if it has a '/', else looked up in the command's PATH (the
 * env's, else the agent's), as execvp does. 0, or the errno to report. */
static int find_program(const char *name, char *const *envp, char *full, size_t n)
{
    if (strchr(name, '/')) {
        if (strlen(name) >= n)
            return ENAMETOOLONG;
        strcpy(full, name);
        return 0;
    }
    const char *path = "/bin:/usr/bin:/sbin:/usr/sbin";
    for (char *const *e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            path = *e + 5;
    int saved = ENOENT;
    size_t al = strlen(name);
    for (const char *p = path;;) {
        const char *colon = strchr(p, ':');
        size_t dl = colon ? (size_t)(colon - p) : strlen(p);
        if (dl + al + 2 <= n) {
            memcpy(full, p, dl);
            full[dl] = '/';
            memcpy(full + dl + 1, name, al + 1);
            if (access(full, X_OK) == 0)
                return 0;
            if (errno != ENOENT && errno != ENOTDIR)
                saved = errno;
        }
        if (!colon)
            return saved;
        p = colon + 1;
    }
}

/* Start the command of an 'X' request: pipes (or a pty), then posix_spawn in a session of
 * its own with default signals and an empty mask. On failure, the 'r' frame is queued. */
static void start_exec(struct conn *c, uint8_t *req, uint32_t n)
{
    struct exec_req r;
    char prog[4096], pts[32];
    int in_r = -1, out_w = -1, err_w = -1, cwd_fd = -1, p[2];
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int fa_ok = 0, attr_ok = 0, e;
    c->state = C_EXEC;
    if (parse_exec(req, n, &r) < 0) {
        queue_error(c, EINVAL, "malformed exec request");
        goto out;
    }
    if ((e = find_program(r.argv[0], r.envp, prog, sizeof prog)) != 0) {
        queue_error(c, e, "cannot run %s: %s", r.argv[0], strerror(e));
        goto out;
    }
    if (r.cwd && (cwd_fd = open(r.cwd, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0) {
        e = errno;
        queue_error(c, e, "cannot change to %s: %s", r.cwd, strerror(e));
        goto out;
    }
    if (posix_spawn_file_actions_init(&fa) != 0 || !(fa_ok = 1) ||
        posix_spawnattr_init(&attr) != 0 || !(attr_ok = 1)) {
        queue_error(c, ENOMEM, "%s", strerror(ENOMEM));
        goto out;
    }
    if (r.want_tty) {
        c->master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
        int unlock = 0;
        if (c->master < 0 || ioctl(c->master, TIOCSPTLCK, &unlock) < 0 ||
            ptsname_r(c->master, pts, sizeof pts) != 0) {
            e = errno;
            queue_error(c, e, "openpty: %s (is devpts mounted on /dev/pts?)", strerror(e));
            goto out;
        }
        if (r.ws.ws_row)
            ioctl(c->master, TIOCSWINSZ, &r.ws);
        c->out_r = c->master;
        if (r.want_stdin)
            c->in_w = c->master;
        /* opened after setsid: the pty becomes the command's controlling terminal */
        posix_spawn_file_actions_addopen(&fa, 0, pts, O_RDWR, 0);
        posix_spawn_file_actions_adddup2(&fa, 0, 1);
        posix_spawn_file_actions_adddup2(&fa, 0, 2);
    } else {
        if (pipe2(p, O_CLOEXEC) < 0)
            goto pipe_failed;
        c->out_r = p[0], out_w = p[1];
        if (pipe2(p, O_CLOEXEC) < 0)
            goto pipe_failed;
        c->err_r = p[0], err_w = p[1];
        if (r.want_stdin) {
            if (pipe2(p, O_CLOEXEC) < 0)
                goto pipe_failed;
            in_r = p[0], c->in_w = p[1];
            fcntl(c->in_w, F_SETFL, O_NONBLOCK);
        }
        posix_spawn_file_actions_adddup2(&fa, in_r >= 0 ? in_r : g_devnull, 0);
        posix_spawn_file_actions_adddup2(&fa, out_w, 1);
        posix_spawn_file_actions_adddup2(&fa, err_w, 2);
    }
    if (cwd_fd >= 0)
        posix_spawn_file_actions_addfchdir_np(&fa, cwd_fd);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &g_ignored);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
                                        POSIX_SPAWN_SETSIGDEF);
    e = posix_spawn(&c->pid, prog, &fa, &attr, r.argv, r.envp);
    if (e != 0) {
        c->pid = 0;
        queue_error(c, e, "cannot run %s: %s", r.argv[0], strerror(e));
    }
    goto out;
pipe_failed:
    e = errno;
    queue_error(c, e, "pipe: %s", strerror(e));
out:
    close_fd(&in_r);
    close_fd(&out_w);
    close_fd(&err_w);
    close_fd(&cwd_fd);
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    if (attr_ok)
        posix_spawnattr_destroy(&attr);
    free(r.argv);
    free(r.envp);
}

/* The command's input frame (in ibuf) into its stdin, as far as it takes it now. */
static void feed_input(struct conn *c)
{
    while (c->held && c->in_w >= 0) {
        ssize_t w = write(c->in_w, c->ibuf + c->in_off, c->len - c->in_off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        if (w <= 0) { /* the command closed its input (EPIPE): drop the rest */
            c->held = 0;
            if (c->master < 0)
                close_fd(&c->in_w);
            return;
        }
        c->in_off += (uint32_t)w;
        if (c->in_off == c->len)
            c->held = 0;
    }
    c->held = 0;
}

/* A frame from the host once the exec runs. */
static void exec_frame(struct conn *c, uint8_t type)
{
    if (type == 'i' && c->in_w >= 0) {
        c->held = 1;
        c->in_off = 0;
        feed_input(c);
    } else if (type == 'c') {
        if (c->in_w >= 0 && c->master < 0) {
            close_fd(&c->in_w);
        } else if (c->in_w >= 0) {
            static const uint8_t eot = 4; /* a pty's end of input: ^D */
            write(c->master, &eot, 1);
        }
    } else if (type == 'w' && c->len >= 4 && c->master >= 0) {
        struct winsize ws = {get_u16(c->ibuf), get_u16(c->ibuf + 2), 0, 0};
        ioctl(c->master, TIOCSWINSZ, &ws);
    } else if (type == 'k' && c->len >= 1 && !c->child_done) {
        kill(c->master >= 0 ? -c->pid : c->pid, c->ibuf[0]);
    }
}

/* Output of the command (fd: out_r or err_r) into the empty obuf, and on its way. */
static int read_output(struct conn *c, int *fd, uint8_t type)
{
    ssize_t rd = read(*fd, c->obuf + 5, CHUNK);
    if (rd < 0 && (errno == EAGAIN || errno == EINTR) && !c->draining)
        return 0;
    if (rd <= 0) { /* EOF; EIO: a pty whose other side is all closed; a drained pty */
        if (*fd == c->master) {
            c->out_r = -1; /* the master stays, for input, until the request ends */
            c->draining = 0;
        } else {
            close_fd(fd);
        }
        return 0;
    }
    c->obuf[0] = type;
    put_u32(c->obuf + 1, (uint32_t)rd);
    c->olen = 5 + (size_t)rd;
    return flush(c);
}

/* The request ends once the command has, and its output is all read. */
static void exec_check_done(struct conn *c)
{
    if (c->state == C_EXEC && c->child_done && c->out_r < 0 && c->err_r < 0 && !c->closing) {
        queue_exit(c, c->status);
        flush(c);
    }
}

/* -- files --------------------------------------------------------------------------- */

static void start_put(struct conn *c, uint8_t *p, uint32_t n)
{
    c->state = C_PUT;
    if (n < 5 || p[n - 1] != 0) {
        queue_error(c, EINVAL, "malformed put request");
        return;
    }
    c->mode = (mode_t)(get_u32(p) & 07777);
    c->path = strdup((char *)p + 4);
    size_t tl = strlen(c->path) + 32;
    c->tmp = malloc(tl);
    if (!c->path || !c->tmp) {
        queue_error(c, ENOMEM, "%s", strerror(ENOMEM));
        return;
    }
    snprintf(c->tmp, tl, "%s.hv-cp-%d-%d", c->path, (int)getpid(), (int)(c - g_conns));
    c->fd = open(c->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, c->mode);
    if (c->fd < 0) {
        int e = errno;
        free(c->tmp);
        c->tmp = NULL;
        queue_error(c, e, "%s: %s", c->path, strerror(e));
        return;
    }
    fchmod(c->fd, c->mode);
}

static void put_frame(struct conn *c, uint8_t type)
{
    if (type == 'i' && !c->err) {
        for (uint32_t off = 0; off < c->len;) {
            ssize_t w = write(c->fd, c->ibuf + off, c->len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                c->err = w < 0 ? errno : EIO;
                break;
            }
            off += (uint32_t)w;
        }
    } else if (type == 'c') {
        int err = c->err;
        if (close(c->fd) < 0 && !err)
            err = errno;
        c->fd = -1;
        if (!err && rename(c->tmp, c->path) < 0)
            err = errno;
        if (err) {
            unlink(c->tmp);
            queue_error(c, err, "%s: %s", c->path, strerror(err));
        } else {
            queue_exit(c, 0);
        }
        free(c->tmp);
        c->tmp = NULL;
    }
}

static void start_get(struct conn *c, uint8_t *p, uint32_t n)
{
    c->state = C_GET;
    if (n < 1 || p[n - 1] != 0) {
        queue_error(c, EINVAL, "malformed get request");
        return;
    }
    const char *path = (const char *)p;
    c->fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (c->fd < 0 || fstat(c->fd, &st) < 0) {
        int e = errno;
        queue_error(c, e, "%s: %s", path, strerror(e));
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        queue_error(c, EISDIR, "%s: %s", path, strerror(EISDIR));
        return;
    }
    c->mode = st.st_mode & 07777;
    c->path = strdup(path);
}

/* The next chunk of the got file into the empty obuf (the end: its mode and the exit). */
static void get_next(struct conn *c)
{
    ssize_t r = read(c->fd, c->obuf + 5, CHUNK);
    if (r < 0 && errno == EINTR)
        return;
    if (r < 0) {
        int e = errno;
        queue_error(c, e, "%s: %s", c->path ? c->path : "?", strerror(e));
    } else if (r > 0) {
        c->obuf[0] = 'o';
        put_u32(c->obuf + 1, (uint32_t)r);
        c->olen = 5 + (size_t)r;
    } else {
        uint8_t m[4];
        put_u32(m, (uint32_t)c->mode);
        queue_frame(c, 'm', m, 4);
        queue_exit(c, 0);
    }
    flush(c);
}

/* -- connections --------------------------------------------------------------------- */

static void conn_finish(struct conn *c)
{
    close_fd(&c->sock);
    if (c->out_r == c->master)
        c->out_r = -1;
    close_fd(&c->out_r);
    close_fd(&c->err_r);
    if (c->in_w == c->master)
        c->in_w = -1;
    close_fd(&c->in_w);
    close_fd(&c->master);
    close_fd(&c->fd);
    free(c->path);
    free(c->tmp);
    c->path = c->tmp = NULL;
    if (c->icap > KEEP_IBUF) {
        free(c->ibuf);
        c->ibuf = NULL;
        c->icap = 0;
    }
    c->state = C_FREE; /* a command still running is reaped as a stranger */
}

static void conn_start(struct conn *c, int sock)
{
    uint8_t *ibuf = c->ibuf, *obuf = c->obuf;
    uint32_t icap = c->icap;
    memset(c, 0, sizeof *c);
    c->ibuf = ibuf, c->icap = icap, c->obuf = obuf;
    c->sock = sock;
    c->out_r = c->err_r = c->in_w = c->master = c->fd = -1;
    c->state = C_REQ;
}

/* A whole frame from the host (its payload in ibuf). */
static void on_frame(struct conn *c, uint8_t type)
{
    if (c->state == C_REQ) {
        if (type == 'X')
            start_exec(c, c->ibuf, c->len);
        else if (type == 'P')
            start_put(c, c->ibuf, c->len);
        else if (type == 'G')
            start_get(c, c->ibuf, c->len);
        else
            queue_error(c, EPROTO, "unknown request type 0x%02x", type);
        if (c->olen)
            flush(c);
    } else if (c->state == C_EXEC) {
        exec_frame(c, type);
    } else if (c->state == C_PUT) {
        put_frame(c, type);
        if (c->olen)
            flush(c);
    } /* a get takes no more frames: they are read, and dropped */
}

/* Read the host's frames as far as they have come (none while input is held for the
 * command). -1: the connection is over. */
static int read_frames(struct conn *c)
{
    while (!c->held && c->state != C_FREE && !c->closing) {
        ssize_t r;
        if (c->head_got < 5) {
            r = recv(c->sock, c->head + c->head_got, 5 - c->head_got, 0);
        } else {
            r = c->len ? recv(c->sock, c->ibuf + c->got, c->len - c->got, 0) : 0;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (c->head_got < 5) {
            if (r <= 0)
                goto gone;
            c->head_got += (uint32_t)r;
            if (c->head_got < 5)
                continue;
            c->len = get_u32(c->head + 1);
            c->got = 0;
            if (c->len > HV_FRAME_MAX)
                goto gone; /* it broke the framing */
            if (c->len + 1 > c->icap) {
                uint8_t *b = realloc(c->ibuf, c->len + 1);
                if (!b)
                    goto gone;
                c->ibuf = b, c->icap = c->len + 1;
            }
            if (c->len)
                continue;
        } else if (r <= 0) {
            goto gone;
        } else {
            c->got += (uint32_t)r;
            if (c->got < c->len)
                continue;
        }
        c->ibuf[c->len] = 0;
        c->head_got = 0;
        on_frame(c, c->head[0]);
        if (c->state == C_FREE)
            return -1;
    }
    return 0;
gone:
    conn_abort(c);
    return -1;
}

/* SIGCHLD: reap every command that ended. */
static void reap(int sfd)
{
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) > 0)
        ;
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_CONNS; i++) {
            struct conn *c = &g_conns[i];
            if (c->state != C_EXEC || c->pid != pid || c->child_done)
                continue;
            c->child_done = 1;
            c->status = status;
            /* a pty stays open while a background process holds it: what the command wrote
             * is in the master already, so take it, then stop reading */
            if (c->out_r >= 0 && c->out_r == c->master)
                c->draining = 1;
            exec_check_done(c);
            break;
        }
    }
}

/* -- the listener -------------------------------------------------------------------- */

static int listen_on(const char *unix_path, unsigned port)
{
    int s;
    if (unix_path) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (strlen(unix_path) >= sizeof a.sun_path) {
            errno = ENAMETOOLONG;
            return -1;
        }
        /* bound and listening under a temporary name, then renamed: whoever sees the path
         * can connect (no window where it exists and refuses) */
        char tmp[sizeof a.sun_path + 16];
        snprintf(tmp, sizeof tmp, "%s.%d", unix_path, (int)getpid());
        if (strlen(tmp) >= sizeof a.sun_path) {
            errno = ENAMETOOLONG;
            return -1;
        }
        strcpy(a.sun_path, tmp);
        s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        unlink(tmp);
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 64) < 0 ||
            rename(tmp, unix_path) < 0)
            return -1;
        return s;
    } else {
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                                .svm_port = port};
        s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0)
            return -1;
    }
    if (listen(s, 64) < 0)
        return -1;
    return s;
}

/* One connection from the listen queue (poll said there is one). Never accept() on an
 * empty queue: Linux's vsock_accept() on a non-blocking socket sleeps until the next timer
 * tick before it says EAGAIN (schedule_timeout(0) in TASK_INTERRUPTIBLE), up to 10 ms with
 * HZ=100. Several waiting connections take a poll round each. */
static void accept_one(int ls)
{
    struct conn *c = NULL;
    for (int i = 0; i < MAX_CONNS && !c; i++)
        if (g_conns[i].state == C_FREE)
            c = &g_conns[i];
    if (!c || (!c->obuf && !(c->obuf = malloc(OBUF_CAP))))
        return; /* (full: the listener is not polled) */
    int s = accept4(ls, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (s < 0)
        return; /* out of files or memory: the next round */
    conn_start(c, s);
    if (read_frames(c) == 0 && c->olen)
        flush(c);
}

enum { R_SOCK, R_OUT, R_ERR, R_IN };

int ap_agent(int argc, char **argv)
{
    const char *unix_path = NULL;
    unsigned port = HV_AGENT_PORT;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-u") && i + 1 < argc)
            unix_path = argv[++i];
        else if (!strcmp(argv[i], "-p") && i + 1 < argc)
            port = (unsigned)atoi(argv[++i]);
        else
            return usage_error("hv-agent");
    }
    int ls = listen_on(unix_path, port);
    if (ls < 0) {
        if (errno == EAFNOSUPPORT && !unix_path)
            return 0; /* a kernel without vsock: no agent, quietly */
        errorf("hv-agent: cannot listen on %s: %s", unix_path ? unix_path : "vsock",
               strerror(errno));
        return 1;
    }
    g_devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    /* what the agent inherited ignored, its commands get at default (posix_spawn resets
     * only these: one system call each, not one per signal) */
    sigemptyset(&g_ignored);
    for (int s = 1; s < 65; s++) {
        struct sigaction old;
        if (sigaction(s, NULL, &old) == 0 && old.sa_handler == SIG_IGN)
            sigaddset(&g_ignored, s);
    }
    sigaddset(&g_ignored, SIGPIPE);
    signal(SIGPIPE, SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        errorf("hv-agent: signalfd: %s", strerror(errno));
        return 1;
    }
    static struct pollfd f[2 + 4 * MAX_CONNS];
    static struct {
        struct conn *c;
        int role;
    } who[2 + 4 * MAX_CONNS];
    for (;;) {
        int nf = 0, busy = 0, room = 0;
        f[nf++] = (struct pollfd){sfd, POLLIN, 0};
        for (int i = 0; i < MAX_CONNS; i++) {
            struct conn *c = &g_conns[i];
            if (c->state == C_FREE) {
                room = 1;
                continue;
            }
            short ev = 0;
            if (c->olen)
                ev |= POLLOUT;
            else if (!c->held && !c->closing)
                ev |= POLLIN;
            if (ev) {
                who[nf].c = c, who[nf].role = R_SOCK;
                f[nf++] = (struct pollfd){c->sock, ev, 0};
            }
            if (c->state == C_EXEC && !c->olen) {
                if (c->draining) {
                    busy = 1; /* read the pty without waiting */
                } else if (c->out_r >= 0) {
                    who[nf].c = c, who[nf].role = R_OUT;
                    f[nf++] = (struct pollfd){c->out_r, POLLIN, 0};
                }
                if (c->err_r >= 0) {
                    who[nf].c = c, who[nf].role = R_ERR;
                    f[nf++] = (struct pollfd){c->err_r, POLLIN, 0};
                }
            }
            if (c->state == C_EXEC && c->held && c->in_w >= 0) {
                who[nf].c = c, who[nf].role = R_IN;
                f[nf++] = (struct pollfd){c->in_w, POLLOUT, 0};
            }
            if (c->state == C_GET && !c->olen && !c->closing)
                busy = 1; /* the next chunk of the file */
        }
        int i_ls = -1;
        if (room) {
            i_ls = nf;
            f[nf++] = (struct pollfd){ls, POLLIN, 0};
        }
        if (poll(f, (nfds_t)nf, busy ? 0 : -1) < 0 && errno != EINTR) {
            errorf("hv-agent: poll: %s", strerror(errno));
            return 1;
        }
        if (f[0].revents)
            reap(sfd);
        for (int k = 1; k < nf; k++) {
            if (!f[k].revents || k == i_ls)
                continue;
            struct conn *c = who[k].c;
            if (c->state == C_FREE || f[k].fd < 0)
                continue;
            switch (who[k].role) {
            case R_SOCK:
                if (c->olen) {
                    if (flush(c) < 0)
                        continue;
                }
                if (!c->olen && (f[k].revents & (POLLIN | POLLHUP | POLLERR)))
                    read_frames(c);
                break;
            case R_OUT:
                if (!c->olen && c->out_r == f[k].fd)
                    read_output(c, &c->out_r, 'o');
                break;
            case R_ERR:
                if (!c->olen && c->err_r == f[k].fd)
                    read_output(c, &c->err_r, 'e');
                break;
            case R_IN:
                feed_input(c);
                if (!c->held && c->state != C_FREE)
                    read_frames(c);
                break;
            }
            if (c->state == C_EXEC)
                exec_check_done(c);
        }
        for (int i = 0; i < MAX_CONNS; i++) {
            struct conn *c = &g_conns[i];
            if (c->state == C_EXEC && c->draining && !c->olen && c->out_r >= 0)
                read_output(c, &c->out_r, 'o');
            if (c->state == C_EXEC)
                exec_check_done(c);
            else if (c->state == C_GET && !c->olen && !c->closing)
                get_next(c);
        }
        if (i_ls >= 0 && f[i_ls].revents)
            accept_one(ls);
    }
}

/* tty: the terminal on stdin (how 'hv exec -t' is checked), as coreutils' tty. */
int ap_tty(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const char *name = ttyname(0);
    puts(name ? name : "not a tty");
    return name ? 0 : 1;
}

/* Called by init (PID 1, all signals blocked) before the network: ptys, then the agent. */
void agent_boot(void)
{
    mkdir("/dev/pts", 0755);
    if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666") <
            0 &&
        errno != EBUSY)
        fprintf(stderr, "init: mount devpts on /dev/pts: %s\n", strerror(errno));
    if (access("/dev/ptmx", F_OK) < 0)
        symlink("pts/ptmx", "/dev/ptmx");
    if (fork() != 0)
        return;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    int fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        if (fd > 2)
            close(fd);
    }
    char *args[] = {"hv-agent", NULL};
    execv("/bin/hv-agent", args);
    _exit(ap_agent(1, args));
}
