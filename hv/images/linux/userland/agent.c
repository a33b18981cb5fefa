/* hv-agent: runs commands and moves files for the host (hv exec, hv cp, vm.exec()).
 *
 * It listens on AF_VSOCK port HV_AGENT_PORT (any CID), or on a Unix socket with -u PATH (how
 * the host's tests drive it). Each connection carries one request, then the answer streams
 * back; the connection ends with the request. A process per connection, so concurrent
 * requests just work (a handler is forked ahead, waiting in accept). The protocol (docs/EXEC.md, hv/_exec.py) is binary frames:
 *
 *     u8 type, u32 length (big-endian), length bytes of payload      (length <= HV_FRAME_MAX)
 *
 * host -> agent: 'X' exec, 'P' put file, 'G' get file (the first frame), then 'i' input
 *                bytes, 'c' end of input, 'w' window size (u16 rows, u16 cols), 'k' signal (u8)
 * agent -> host: 'o' stdout (or a file's bytes), 'e' stderr, 'x' exit (u8 how: 0 exited,
 *                1 killed by a signal; i32 code or signal number), 'r' error (u32 errno,
 *                then a message)
 *
 * Back-pressure both ways: the agent writes to the socket blocking and reads the command's
 * output only when it has sent the last; it reads input frames only when the command has
 * taken the last. SIGPIPE is ignored and a host that goes away mid-stream ends that request
 * (its command is killed), never the agent. Handlers are reaped by the kernel (SA_NOCLDWAIT);
 * a handler reaps its command through a signalfd.
 *
 * agent_boot() is what init calls: it mounts devpts (ptys for 'exec -t') and starts the agent
 * in the background. The agent is not restarted if it dies (kill it and exec says so at once).
 */
#include "hv.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <linux/vm_sockets.h>

#define CHUNK (64 << 10) /* output read and sent at once */

static uint8_t *g_buf;  /* HV_FRAME_MAX + header: one frame in or out at a time */

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

/* All n bytes read (out = 0) or written (out = 1); -1 on an error or an early end. */
static int io_full(int fd, void *buf, size_t n, int out)
{
    uint8_t *p = buf;
    while (n) {
        ssize_t r = out ? write(fd, p, n) : read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

#define read_full(fd, buf, n) io_full(fd, buf, n, 0)
#define write_full(fd, buf, n) io_full(fd, (void *)(buf), n, 1)

/* A frame whose payload is already at buf + 5 (no copy): fills the header, sends it whole. */
static int send_inplace(int sock, uint8_t type, uint8_t *buf, uint32_t n)
{
    buf[0] = type;
    put_u32(buf + 1, n);
    return write_full(sock, buf, 5 + (size_t)n);
}

static int send_frame(int sock, uint8_t type, const void *payload, uint32_t n)
{
    uint8_t head[5];
    head[0] = type;
    put_u32(head + 1, n);
    struct iovec iov[2] = {{head, 5}, {(void *)payload, n}};
    size_t total = 5 + (size_t)n;
    int cnt = 2;
    struct iovec *v = iov;
    while (total) {
        ssize_t r = writev(sock, v, cnt);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        total -= (size_t)r;
        while (cnt && (size_t)r >= v->iov_len) {
            r -= (ssize_t)v->iov_len;
            v++;
            cnt--;
        }
        if (cnt) {
            v->iov_base = (uint8_t *)v->iov_base + r;
            v->iov_len -= (size_t)r;
        }
    }
    return 0;
}

static int send_error(int sock, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int send_error(int sock, int err, const char *fmt, ...)
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
    return send_frame(sock, 'r', p, 4 + (uint32_t)n);
}

static int send_exit(int sock, int status)
{
    uint8_t p[5];
    int how = WIFSIGNALED(status) ? 1 : 0;
    p[0] = (uint8_t)how;
    put_u32(p + 1, (uint32_t)(how ? WTERMSIG(status) : WEXITSTATUS(status)));
    return send_frame(sock, 'x', p, 5);
}

/* The next frame into g_buf + 5; its type and length. -1: the host went away, or broke the
 * framing (a length over HV_FRAME_MAX). */
static int recv_frame(int sock, uint8_t *type, uint32_t *len)
{
    uint8_t head[5];
    if (read_full(sock, head, 5) < 0)
        return -1;
    *type = head[0];
    *len = get_u32(head + 1);
    if (*len > HV_FRAME_MAX)
        return -1;
    return read_full(sock, g_buf + 5, *len);
}

/* -- exec ---------------------------------------------------------------------------- */

struct exec_req {
    int want_stdin, want_tty;
    struct winsize ws;
    const char *cwd;
    char **argv;
    char **envp;
};

/* Flags u8 (1 stdin, 2 tty), rows u16, cols u16, argc u16, envc u16, then NUL-ended strings:
 * cwd ("" for none), argv[argc], env[envc] ("KEY=VALUE", added to the agent's own). */
static int parse_exec(uint8_t *p, uint32_t n, struct exec_req *r)
{
    extern char **environ;
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
    char **strs = calloc(1 + argc + envc, sizeof *strs);
    size_t base = 0;
    while (environ[base])
        base++;
    r->argv = calloc(argc + 1, sizeof *r->argv);
    r->envp = calloc(base + envc + 1, sizeof *r->envp);
    if (!strs || !r->argv || !r->envp)
        return -1;
    for (unsigned i = 0; i < 1 + argc + envc; i++) {
        char *z = memchr(s, 0, (size_t)(end - s));
        if (!z)
            return -1;
        strs[i] = s;
        s = z + 1;
    }
    r->cwd = strs[0][0] ? strs[0] : NULL;
    for (unsigned i = 0; i < argc; i++)
        r->argv[i] = strs[1 + i];
    /* env: the agent's, with each addition replacing a variable of the same name */
    size_t k = 0;
    for (size_t i = 0; i < base; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t klen = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        int replaced = 0;
        for (unsigned j = 0; j < envc && !replaced; j++)
            replaced = strncmp(strs[1 + argc + j], environ[i], klen) == 0 &&
                       strs[1 + argc + j][klen] == '=';
        if (!replaced)
            r->envp[k++] = environ[i];
    }
    for (unsigned j = 0; j < envc; j++)
        r->envp[k++] = strs[1 + argc + j];
    return 0;
}

static int set_nonblock(int fd)
{
    return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Runs in the vfork()ed child: only system calls, then exec or _exit. Reports a failure
 * (stage, errno) on errfd. */
static void child_exec(struct exec_req *r, int in, int out, int err, int tty, int errfd)
{
    sigset_t none;
    sigemptyset(&none);
    for (int s = 1; s < 65; s++)
        signal(s, SIG_DFL); /* ignored signals survive exec: give the command the defaults */
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    if (tty >= 0) {
        ioctl(tty, TIOCSCTTY, 0);
        in = out = err = tty;
    }
    if (in < 0)
        in = open("/dev/null", O_RDONLY);
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    int fail[2];
    if (r->cwd && chdir(r->cwd) < 0) {
        fail[0] = 1;
        fail[1] = errno;
        write(errfd, fail, sizeof fail);
        _exit(127);
    }
    const char *path = NULL;
    for (char **e = r->envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            path = *e + 5;
    /* execvpe is a GNU extension in musl too; search PATH ourselves for the env's PATH */
    if (strchr(r->argv[0], '/')) {
        execve(r->argv[0], r->argv, r->envp);
    } else {
        char full[4096];
        int saved = ENOENT;
        const char *p = path ? path : "/bin:/usr/bin:/sbin:/usr/sbin";
        while (*p) {
            const char *c = strchr(p, ':');
            size_t dl = c ? (size_t)(c - p) : strlen(p);
            size_t al = strlen(r->argv[0]);
            if (dl + al + 2 <= sizeof full) {
                memcpy(full, p, dl);
                full[dl] = '/';
                memcpy(full + dl + 1, r->argv[0], al + 1);
                execve(full, r->argv, r->envp);
                if (errno != ENOENT && errno != ENOTDIR)
                    saved = errno;
            }
            if (!c)
                break;
            p = c + 1;
        }
        errno = saved;
    }
    fail[0] = 2;
    fail[1] = errno;
    write(errfd, fail, sizeof fail);
    _exit(127);
}

static int do_exec(int sock, uint8_t *req, uint32_t n)
{
    struct exec_req r;
    if (parse_exec(req, n, &r) < 0)
        return send_error(sock, EINVAL, "malformed exec request");
    int in_w = -1, in_r = -1, out_r = -1, out_w = -1, err_r = -1, err_w = -1, master = -1,
        slave = -1, ep[2];
    if (r.want_tty) {
        if (openpty(&master, &slave, NULL, NULL, r.ws.ws_row ? &r.ws : NULL) < 0)
            return send_error(sock, errno, "openpty: %s (is devpts mounted on /dev/pts?)",
                              strerror(errno));
        fcntl(master, F_SETFD, FD_CLOEXEC);
        fcntl(slave, F_SETFD, FD_CLOEXEC);
        out_r = master;
        if (r.want_stdin)
            in_w = master;
    } else {
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
            return send_error(sock, errno, "pipe: %s", strerror(errno));
        out_r = p[0], out_w = p[1];
        if (pipe2(p, O_CLOEXEC) < 0)
            return send_error(sock, errno, "pipe: %s", strerror(errno));
        err_r = p[0], err_w = p[1];
        if (r.want_stdin) {
            if (pipe2(p, O_CLOEXEC) < 0)
                return send_error(sock, errno, "pipe: %s", strerror(errno));
            in_r = p[0], in_w = p[1];
        }
    }
    if (pipe2(ep, O_CLOEXEC) < 0)
        return send_error(sock, errno, "pipe: %s", strerror(errno));

    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);

    pid_t pid = vfork();
    if (pid == 0)
        child_exec(&r, in_r, out_w, err_w, slave, ep[1]);
    int spawn_errno = errno;
    close(ep[1]);
    if (in_r >= 0)
        close(in_r);
    if (out_w >= 0)
        close(out_w);
    if (err_w >= 0)
        close(err_w);
    if (slave >= 0)
        close(slave);
    if (pid < 0)
        return send_error(sock, spawn_errno, "fork: %s", strerror(spawn_errno));
    int fail[2];
    if (read_full(ep[0], fail, sizeof fail) == 0) {
        waitpid(pid, NULL, 0);
        if (fail[0] == 1)
            return send_error(sock, fail[1], "cannot change to %s: %s", r.cwd,
                              strerror(fail[1]));
        return send_error(sock, fail[1], "cannot run %s: %s", r.argv[0], strerror(fail[1]));
    }
    close(ep[0]);
    if (master >= 0)
        set_nonblock(master);
    else if (in_w >= 0)
        set_nonblock(in_w);

    int status = 0, child_done = 0, host_gone = 0;
    int out_open = 1, err_open = err_r >= 0;
    uint32_t in_off = 0, in_len = 0; /* input waiting for the command, in g_buf + 5 */
    int in_eof = 0;
    uint8_t *obuf = malloc(5 + CHUNK);
    if (!obuf)
        _exit(1);
    while (!(child_done && !out_open && !err_open)) {
        struct pollfd f[5];
        int nf = 0, i_sock = -1, i_out = -1, i_err = -1, i_in = -1, i_sig;
        if (in_len == 0 && !host_gone) {
            i_sock = nf;
            f[nf++] = (struct pollfd){sock, POLLIN, 0};
        }
        if (out_open) {
            i_out = nf;
            f[nf++] = (struct pollfd){out_r, POLLIN, 0};
        }
        if (err_open) {
            i_err = nf;
            f[nf++] = (struct pollfd){err_r, POLLIN, 0};
        }
        if (in_len && in_w >= 0) {
            i_in = nf;
            f[nf++] = (struct pollfd){in_w, POLLOUT, 0};
        }
        i_sig = nf;
        f[nf++] = (struct pollfd){sfd, POLLIN, 0};
        if (poll(f, (nfds_t)nf, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (i_sock >= 0 && f[i_sock].revents) {
            uint8_t type;
            uint32_t len;
            if (recv_frame(sock, &type, &len) < 0) {
                /* the host went away: end the command (its group: a pty's session too) */
                kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
                host_gone = 1;
                out_open = err_open = 0;
            } else if (type == 'i' && in_w >= 0 && !in_eof) {
                in_off = 0;
                in_len = len;
            } else if (type == 'c') {
                in_eof = 1;
                if (in_w >= 0 && master < 0) {
                    close(in_w);
                    in_w = -1;
                } else if (in_w >= 0) {
                    static const uint8_t eot = 4; /* a pty's end of input: ^D */
                    write(master, &eot, 1);
                }
            } else if (type == 'w' && len >= 4 && master >= 0) {
                struct winsize ws = {get_u16(g_buf + 5), get_u16(g_buf + 7), 0, 0};
                ioctl(master, TIOCSWINSZ, &ws);
            } else if (type == 'k' && len >= 1) {
                kill(master >= 0 ? -pid : pid, g_buf[5]);
            }
        }
        if (i_in >= 0 && f[i_in].revents) {
            ssize_t w = write(in_w, g_buf + 5 + in_off, in_len - in_off);
            if (w > 0) {
                in_off += (uint32_t)w;
                if (in_off == in_len)
                    in_len = 0;
            } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                in_len = 0; /* the command closed its input (EPIPE): drop the rest */
                if (master < 0) {
                    close(in_w);
                    in_w = -1;
                }
            }
        }
        int outs[2] = {i_out, i_err};
        for (int j = 0; j < 2; j++) {
            int at = outs[j];
            if (at < 0 || !f[at].revents)
                continue;
            int fd = j ? err_r : out_r;
            ssize_t rd = read(fd, obuf + 5, CHUNK);
            if (rd < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (rd <= 0) { /* EOF, or EIO: a pty whose other side is all closed */
                if (j)
                    err_open = 0;
                else
                    out_open = 0;
                continue;
            }
            if (send_inplace(sock, j ? 'e' : 'o', obuf, (uint32_t)rd) < 0) {
                kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
                host_gone = 1;
                out_open = err_open = 0;
            }
        }
        if (f[i_sig].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0)
                ;
            if (!child_done && waitpid(pid, &status, WNOHANG) == pid) {
                child_done = 1;
                /* a pty stays open while a background process holds it: what the command
                 * wrote is in the master already, so take it, then stop reading */
                if (master >= 0) {
                    ssize_t rd;
                    while (out_open && (rd = read(master, obuf + 5, CHUNK)) > 0)
                        if (send_inplace(sock, 'o', obuf, (uint32_t)rd) < 0)
                            host_gone = 1;
                    out_open = 0;
                }
            }
        }
    }
    if (!child_done)
        waitpid(pid, &status, 0);
    if (host_gone)
        return -1;
    return send_exit(sock, status);
}

/* -- files --------------------------------------------------------------------------- */

static int do_put(int sock, uint8_t *p, uint32_t n)
{
    if (n < 5 || p[n - 1] != 0)
        return send_error(sock, EINVAL, "malformed put request");
    mode_t mode = (mode_t)(get_u32(p) & 07777);
    char *path = (char *)p + 4;
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.hv-cp-%d", path, (int)getpid()) >= (int)sizeof tmp)
        return send_error(sock, ENAMETOOLONG, "%s: %s", path, strerror(ENAMETOOLONG));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return send_error(sock, errno, "%s: %s", path, strerror(errno));
    fchmod(fd, mode);
    int err = 0;
    for (;;) {
        uint8_t type;
        uint32_t len;
        if (recv_frame(sock, &type, &len) < 0) {
            close(fd);
            unlink(tmp);
            return -1; /* the host went away: no half-written file left behind */
        }
        if (type == 'c')
            break;
        if (type == 'i' && !err && write_full(fd, g_buf + 5, len) < 0)
            err = errno;
    }
    if (!err && close(fd) < 0)
        err = errno;
    else if (err)
        close(fd);
    if (!err && rename(tmp, path) < 0)
        err = errno;
    if (err) {
        unlink(tmp);
        return send_error(sock, err, "%s: %s", path, strerror(err));
    }
    return send_exit(sock, 0);
}

static int do_get(int sock, uint8_t *p, uint32_t n)
{
    if (n < 1 || p[n - 1] != 0)
        return send_error(sock, EINVAL, "malformed get request");
    const char *path = (const char *)p;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return send_error(sock, errno, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        return send_error(sock, EISDIR, "%s: %s", path, strerror(EISDIR));
    }
    uint8_t *buf = malloc(5 + CHUNK);
    if (!buf)
        return send_error(sock, ENOMEM, "%s", strerror(ENOMEM));
    for (;;) {
        ssize_t r = read(fd, buf + 5, CHUNK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return send_error(sock, e, "%s: %s", path, strerror(e));
        }
        if (r == 0)
            break;
        if (send_inplace(sock, 'o', buf, (uint32_t)r) < 0)
            return -1;
    }
    close(fd);
    uint8_t m[4];
    put_u32(m, (uint32_t)(st.st_mode & 07777));
    send_frame(sock, 'm', m, 4);
    return send_exit(sock, 0);
}

static void handle(int sock)
{
    g_buf = malloc(5 + HV_FRAME_MAX);
    uint8_t type;
    uint32_t len;
    if (!g_buf || recv_frame(sock, &type, &len) < 0)
        return;
    /* the request's payload moves out of g_buf, which input frames reuse */
    uint8_t *req = malloc(len + 1);
    if (!req)
        return;
    memcpy(req, g_buf + 5, len);
    req[len] = 0;
    if (type == 'X')
        do_exec(sock, req, len);
    else if (type == 'P')
        do_put(sock, req, len);
    else if (type == 'G')
        do_get(sock, req, len);
    else
        send_error(sock, EPROTO, "unknown request type 0x%02x", type);
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
        strcpy(a.sun_path, unix_path);
        s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        unlink(unix_path);
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0)
            return -1;
    } else {
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                                .svm_port = port};
        s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0)
            return -1;
    }
    if (listen(s, 64) < 0)
        return -1;
    return s;
}

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
    struct sigaction sa = {0};
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = SIG_DFL;
    sa.sa_flags = SA_NOCLDWAIT; /* handlers are reaped by the kernel */
    sigaction(SIGCHLD, &sa, NULL);
    /* A handler is forked before its connection comes: it waits in accept(), tells the
     * listener when it has one (which forks the next), and serves it. Waiting handlers
     * run at the lowest priority, so forking the next one takes the CPU only when the
     * request being served leaves it idle; a handler with a connection runs at 0. */
    setpriority(PRIO_PROCESS, 0, 19);
    for (;;) {
        int ready[2];
        if (pipe2(ready, O_CLOEXEC) < 0) {
            errorf("hv-agent: pipe: %s", strerror(errno));
            return 1;
        }
        pid_t listener = getpid();
        pid_t pid = fork();
        if (pid == 0) {
            close(ready[0]);
            /* a waiting handler ends with the listener (a killed agent takes no request) */
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != listener)
                _exit(0);
            int c;
            while ((c = accept4(ls, NULL, NULL, SOCK_CLOEXEC)) < 0)
                if (errno != EINTR && errno != ECONNABORTED && errno != EMFILE &&
                    errno != ENFILE && errno != ENOMEM && errno != ENOBUFS)
                    _exit(1);
            prctl(PR_SET_PDEATHSIG, 0); /* a request being served is finished */
            setpriority(PRIO_PROCESS, 0, 0);
            close(ready[1]); /* the listener forks the next handler */
            close(ls);
            sa.sa_flags = 0;
            sigaction(SIGCHLD, &sa, NULL); /* the handler waits for its command itself */
            handle(c);
            _exit(0);
        }
        close(ready[1]);
        char b;
        while (read(ready[0], &b, 1) < 0 && errno == EINTR)
            ;
        close(ready[0]);
        if (pid < 0)
            sleep(1); /* out of processes: try again, without spinning */
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
