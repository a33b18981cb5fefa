/* File and system applets: echo cat ls mkdir rm mount umount dd sync dmesg ps kill uname
 * sleep true false poweroff reboot stress. */
#include "hv.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int ap_true(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

int ap_false(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return 1;
}

int ap_echo(int argc, char **argv)
{
    int i = 1, newline = 1;
    if (argc > 1 && !strcmp(argv[1], "-n")) {
        newline = 0;
        i++;
    }
    for (; i < argc; i++)
        printf("%s%s", argv[i], i + 1 < argc ? " " : "");
    if (newline)
        putchar('\n');
    return fflush(stdout) ? 1 : 0;
}

static int copy_fd(int in, int out)
{
    static char buf[65536];
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0)
                return -1;
            off += w;
        }
    }
}

int ap_cat(int argc, char **argv)
{
    int rc = 0;
    if (argc < 2)
        return copy_fd(0, 1) < 0;
    for (int i = 1; i < argc; i++) {
        int fd = strcmp(argv[i], "-") ? open(argv[i], O_RDONLY | O_CLOEXEC) : 0;
        if (fd < 0 || copy_fd(fd, 1) < 0) {
            errorf("cat: %s: %s", argv[i], strerror(errno));
            rc = 1;
        }
        if (fd > 0)
            close(fd);
    }
    return rc;
}

static void mode_string(mode_t m, char *s)
{
    s[0] = S_ISDIR(m) ? 'd' : S_ISLNK(m) ? 'l' : S_ISCHR(m) ? 'c' : S_ISBLK(m) ? 'b'
         : S_ISFIFO(m) ? 'p' : S_ISSOCK(m) ? 's' : '-';
    const char *rwx = "rwxrwxrwx";
    for (int i = 0; i < 9; i++)
        s[1 + i] = (m & (1u << (8 - i))) ? rwx[i] : '-';
    s[10] = 0;
}

static void ls_entry(const char *dir, const char *name, int lng)
{
    if (!lng) {
        printf("%s\n", name);
        return;
    }
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (lstat(path, &st) < 0) {
        printf("?????????? %s\n", name);
        return;
    }
    char mode[11];
    mode_string(st.st_mode, mode);
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))
        printf("%s %3u,%3u %s", mode, major(st.st_rdev), minor(st.st_rdev), name);
    else
        printf("%s %8lld %s", mode, (long long)st.st_size, name);
    if (S_ISLNK(st.st_mode)) {
        char target[4096];
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n >= 0)
            printf(" -> %.*s", (int)n, target);
    } else if (S_ISDIR(st.st_mode)) {
        putchar('/');
    }
    putchar('\n');
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int ls_one(const char *path, int lng, int all, int header)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        errorf("ls: %s: %s", path, strerror(errno));
        return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
        ls_entry(".", path, lng);
        return 0;
    }
    DIR *d = opendir(path);
    if (!d) {
        errorf("ls: %s: %s", path, strerror(errno));
        return 1;
    }
    size_t n = 0, cap = 64;
    char **names = malloc(cap * sizeof *names);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' && !all)
            continue;
        if (n == cap)
            names = realloc(names, (cap *= 2) * sizeof *names);
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    if (header)
        printf("%s:\n", path);
    for (size_t i = 0; i < n; i++) {
        ls_entry(path, names[i], lng);
        free(names[i]);
    }
    free(names);
    return 0;
}

int ap_ls(int argc, char **argv)
{
    int lng = 0, all = 0, opt, rc = 0;
    optind = 1;
    while ((opt = getopt(argc, argv, "la")) != -1) {
        if (opt == 'l')
            lng = 1;
        else if (opt == 'a')
            all = 1;
        else
            return usage_error("ls");
    }
    if (optind == argc)
        return ls_one(".", lng, all, 0);
    for (int i = optind; i < argc; i++)
        rc |= ls_one(argv[i], lng, all, argc - optind > 1);
    return rc;
}

int ap_mkdir(int argc, char **argv)
{
    int parents = argc > 1 && !strcmp(argv[1], "-p"), rc = 0;
    if (argc < 2 + parents)
        return usage_error("mkdir");
    for (int i = 1 + parents; i < argc; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s", argv[i]);
        if (parents)
            for (char *p = path + 1; *p; p++)
                if (*p == '/') {
                    *p = 0;
                    mkdir(path, 0755);
                    *p = '/';
                }
        if (mkdir(path, 0755) < 0 && !(parents && errno == EEXIST)) {
            errorf("mkdir: %s: %s", argv[i], strerror(errno));
            rc = 1;
        }
    }
    return rc;
}

int ap_rm(int argc, char **argv)
{
    int rc = 0;
    if (argc < 2)
        return usage_error("rm");
    for (int i = 1; i < argc; i++)
        if (unlink(argv[i]) < 0 && (errno != EISDIR || rmdir(argv[i]) < 0)) {
            errorf("rm: %s: %s", argv[i], strerror(errno));
            rc = 1;
        }
    return rc;
}

int ap_mount(int argc, char **argv)
{
    const char *type = "ext4", *opts = NULL;
    int opt;
    optind = 1;
    while ((opt = getopt(argc, argv, "t:o:")) != -1) {
        if (opt == 't')
            type = optarg;
        else if (opt == 'o')
            opts = optarg;
        else
            return usage_error("mount");
    }
    if (optind == argc) {
        char *a[] = {"cat", "/proc/mounts", NULL};
        return ap_cat(2, a);
    }
    if (optind != argc - 2)
        return usage_error("mount");
    unsigned long flags = 0;
    char data[256] = "";
    if (opts) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", opts);
        for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
            if (!strcmp(tok, "ro"))
                flags |= MS_RDONLY;
            else if (!strcmp(tok, "rw"))
                flags &= ~(unsigned long)MS_RDONLY;
            else if (!strcmp(tok, "sync"))
                flags |= MS_SYNCHRONOUS;
            else if (!strcmp(tok, "remount"))
                flags |= MS_REMOUNT;
            else
                snprintf(data + strlen(data), sizeof data - strlen(data), "%s%s",
                         data[0] ? "," : "", tok);
        }
    }
    if (mount(argv[optind], argv[optind + 1], type, flags, data[0] ? data : NULL) < 0) {
        errorf("mount: %s on %s (%s): %s", argv[optind], argv[optind + 1], type,
               strerror(errno));
        return 1;
    }
    return 0;
}

int ap_umount(int argc, char **argv)
{
    if (argc != 2)
        return usage_error("umount");
    if (umount(argv[1]) < 0) {
        errorf("umount: %s: %s", argv[1], strerror(errno));
        return 1;
    }
    return 0;
}

int ap_sync(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    sync();
    return 0;
}

int ap_dd(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    uint64_t bs = 512, count = UINT64_MAX, skip = 0, seek = 0;
    int fsync_out = 0;
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            return usage_error("dd");
        *eq = 0;
        const char *k = argv[i], *v = eq + 1;
        int bad = 0;
        if (!strcmp(k, "if"))
            in = v;
        else if (!strcmp(k, "of"))
            out = v;
        else if (!strcmp(k, "bs"))
            bad = parse_size(v, &bs) < 0 || bs == 0 || bs > (64u << 20);
        else if (!strcmp(k, "count"))
            bad = parse_size(v, &count) < 0;
        else if (!strcmp(k, "skip"))
            bad = parse_size(v, &skip) < 0;
        else if (!strcmp(k, "seek"))
            bad = parse_size(v, &seek) < 0;
        else if (!strcmp(k, "conv") && (!strcmp(v, "fsync") || !strcmp(v, "fdatasync")))
            fsync_out = 1;
        else
            bad = 1;
        *eq = '=';
        if (bad) {
            errorf("dd: bad operand '%s'", argv[i]);
            return usage_error("dd");
        }
    }
    int ifd = in ? open(in, O_RDONLY | O_CLOEXEC) : 0;
    if (ifd < 0) {
        errorf("dd: %s: %s", in, strerror(errno));
        return 1;
    }
    int ofd = out ? open(out, O_WRONLY | O_CREAT | O_CLOEXEC | (seek ? 0 : O_TRUNC), 0644) : 1;
    if (ofd < 0) {
        errorf("dd: %s: %s", out, strerror(errno));
        return 1;
    }
    /* block devices refuse O_TRUNC silently; nothing else to do */
    if (skip && lseek(ifd, (off_t)(skip * bs), SEEK_SET) < 0) {
        errorf("dd: skip: %s", strerror(errno));
        return 1;
    }
    if (seek && lseek(ofd, (off_t)(seek * bs), SEEK_SET) < 0) {
        errorf("dd: seek: %s", strerror(errno));
        return 1;
    }
    char *buf = malloc(bs);
    if (!buf) {
        errorf("dd: out of memory");
        return 1;
    }
    uint64_t full_in = 0, part_in = 0, full_out = 0, part_out = 0, bytes = 0;
    uint64_t t0 = now_ns();
    int rc = 0;
    while (full_in + part_in < count) {
        ssize_t n = read(ifd, buf, bs);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            errorf("dd: read: %s", strerror(errno));
            rc = 1;
            break;
        }
        if (n == 0)
            break;
        if ((uint64_t)n == bs)
            full_in++;
        else
            part_in++;
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = write(ofd, buf + off, (size_t)(n - off));
            if (w < 0) {
                errorf("dd: write: %s", strerror(errno));
                rc = 1;
                break;
            }
            off += w;
        }
        if (rc)
            break;
        if ((uint64_t)n == bs)
            full_out++;
        else
            part_out++;
        bytes += (uint64_t)n;
    }
    if (fsync_out && fsync(ofd) < 0) {
        errorf("dd: fsync: %s", strerror(errno));
        rc = 1;
    }
    double s = (double)(now_ns() - t0) / 1e9;
    fprintf(stderr, "%llu+%llu records in\n%llu+%llu records out\n",
            (unsigned long long)full_in, (unsigned long long)part_in,
            (unsigned long long)full_out, (unsigned long long)part_out);
    fprintf(stderr, "%llu bytes copied, %.3f s, %.2f MB/s\n", (unsigned long long)bytes, s,
            s > 0 ? (double)bytes / s / 1e6 : 0.0);
    free(buf);
    if (in)
        close(ifd);
    if (out && close(ofd) < 0)
        rc = 1;
    return rc;
}

int ap_dmesg(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    int len = klogctl(10, NULL, 0); /* SYSLOG_ACTION_SIZE_BUFFER */
    if (len <= 0)
        len = 1 << 17;
    char *buf = malloc((size_t)len);
    int n = klogctl(3, buf, len); /* SYSLOG_ACTION_READ_ALL */
    if (n < 0) {
        errorf("dmesg: %s", strerror(errno));
        free(buf);
        return 1;
    }
    /* strip the "<level>" prefixes */
    for (int i = 0; i < n;) {
        int j = i;
        if (buf[j] == '<') {
            while (j < n && buf[j] != '>')
                j++;
            j++;
        }
        int e = j;
        while (e < n && buf[e] != '\n')
            e++;
        fwrite(buf + j, 1, (size_t)(e < n ? e - j + 1 : e - j), stdout);
        i = e + 1;
    }
    free(buf);
    return 0;
}

int ap_ps(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    DIR *d = opendir("/proc");
    if (!d) {
        errorf("ps: /proc: %s", strerror(errno));
        return 1;
    }
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    printf("  PID  PPID S     RSS    TIME CMD\n");
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        char path[64], stat[1024], cmd[256] = "";
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, stat, sizeof stat - 1);
        close(fd);
        if (n <= 0)
            continue;
        stat[n] = 0;
        char *lp = strchr(stat, '('), *rp = strrchr(stat, ')');
        if (!lp || !rp)
            continue;
        snprintf(cmd, sizeof cmd, "%.*s", (int)(rp - lp - 1), lp + 1);
        char state;
        int ppid;
        unsigned long ut, st;
        long rss;
        if (sscanf(rp + 2, "%c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d "
                           "%*d %*d %*u %*u %ld",
                   &state, &ppid, &ut, &st, &rss) != 5)
            continue;
        /* the full command line if there is one */
        snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            char cl[256];
            n = read(fd, cl, sizeof cl - 1);
            close(fd);
            if (n > 0) {
                cl[n] = 0;
                /* a forked applet keeps the shell's argv: then the name (comm) tells more */
                const char *argv0 = strrchr(cl, '/') ? strrchr(cl, '/') + 1 : cl;
                int same = strncmp(argv0, cmd, 15) == 0;
                for (ssize_t i = 0; i < n - 1; i++)
                    if (!cl[i])
                        cl[i] = ' ';
                if (same)
                    snprintf(cmd, sizeof cmd, "%s", cl);
            }
        }
        unsigned long secs = (ut + st) / (unsigned long)tick;
        printf("%5s %5d %c %6ldK %4lu:%02lu %s\n", e->d_name, ppid, state, rss * page / 1024,
               secs / 60, secs % 60, cmd);
    }
    closedir(d);
    return 0;
}

int ap_kill(int argc, char **argv)
{
    int sig = SIGTERM, i = 1, rc = 0;
    if (argc > 1 && argv[1][0] == '-') {
        const char *s = argv[1] + 1;
        static const struct { const char *n; int s; } names[] = {
            {"HUP", SIGHUP}, {"INT", SIGINT}, {"KILL", SIGKILL}, {"TERM", SIGTERM},
            {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"STOP", SIGSTOP}, {"CONT", SIGCONT},
        };
        if (!strncmp(s, "SIG", 3))
            s += 3;
        sig = atoi(s);
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
            if (!strcmp(s, names[k].n))
                sig = names[k].s;
        if (sig <= 0)
            return usage_error("kill");
        i++;
    }
    if (i >= argc)
        return usage_error("kill");
    for (; i < argc; i++)
        if (kill(atoi(argv[i]), sig) < 0) {
            errorf("kill: %s: %s", argv[i], strerror(errno));
            rc = 1;
        }
    return rc;
}

int ap_uname(int argc, char **argv)
{
    struct utsname u;
    uname(&u);
    if (argc > 1 && !strcmp(argv[1], "-a"))
        printf("%s %s %s %s %s\n", u.sysname, u.nodename, u.release, u.version, u.machine);
    else if (argc > 1 && !strcmp(argv[1], "-r"))
        printf("%s\n", u.release);
    else
        printf("%s\n", u.sysname);
    return 0;
}

int ap_sleep(int argc, char **argv)
{
    char *end;
    double s = argc == 2 ? strtod(argv[1], &end) : -1;
    if (argc != 2 || *end || s < 0)
        return usage_error("sleep");
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
    return 0;
}

static int shutdown_now(int how)
{
    sync();
    if (getpid() != 1 && kill(1, how == RB_POWER_OFF ? SIGUSR2 : SIGTERM) == 0) {
        pause(); /* init terminates everyone, then calls reboot(2) */
        return 0;
    }
    reboot(how);
    errorf("reboot(2): %s", strerror(errno));
    return 1;
}

int ap_poweroff(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return shutdown_now(RB_POWER_OFF);
}

int ap_reboot(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return shutdown_now(RB_AUTOBOOT);
}

/* stress: ITER times (fork, exec /bin/true, exit, wait) and, in this process, map PAGES
 * fresh anonymous pages, touch each one (a page fault each) and unmap them. */
int ap_stress(int argc, char **argv)
{
    long iters = 100, pages = 64;
    int opt;
    optind = 1;
    while ((opt = getopt(argc, argv, "n:p:")) != -1) {
        if (opt == 'n')
            iters = atol(optarg);
        else if (opt == 'p')
            pages = atol(optarg);
        else
            return usage_error("stress");
    }
    if (optind != argc || iters < 1 || pages < 0)
        return usage_error("stress");
    long psz = sysconf(_SC_PAGESIZE);
    struct rusage r0s, r0c, r1s, r1c;
    getrusage(RUSAGE_SELF, &r0s);
    getrusage(RUSAGE_CHILDREN, &r0c);
    uint64_t t_spawn = 0, t_touch = 0, t0 = now_ns(), worst = 0;
    long failures = 0;
    unsigned long checksum = 0;
    for (long i = 0; i < iters; i++) {
        uint64_t a = now_ns();
        pid_t pid = fork();
        if (pid == 0) {
            char *av[] = {"true", NULL};
            execv("/bin/true", av);
            _exit(127);
        }
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0)
            failures++;
        uint64_t b = now_ns();
        if (b - a > worst)
            worst = b - a;
        t_spawn += b - a;
        if (pages) {
            size_t len = (size_t)pages * (size_t)psz;
            volatile unsigned char *m =
                mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (m == MAP_FAILED) {
                failures++;
            } else {
                for (long p = 0; p < pages; p++)
                    m[p * psz] = (unsigned char)(i + p);
                for (long p = 0; p < pages; p++)
                    checksum += m[p * psz];
                munmap((void *)m, len);
            }
            t_touch += now_ns() - b;
        }
    }
    uint64_t total = now_ns() - t0;
    getrusage(RUSAGE_SELF, &r1s);
    getrusage(RUSAGE_CHILDREN, &r1c);
    long faults = (r1s.ru_minflt - r0s.ru_minflt) + (r1c.ru_minflt - r0c.ru_minflt);
    printf("stress: %ld iterations in %.3f s, %ld failures (checksum %lu)\n", iters,
           (double)total / 1e9, failures, checksum);
    printf("stress: fork+exec+exit+wait avg %.1f us, worst %.1f us, %.1f spawns/s\n",
           (double)t_spawn / 1e3 / (double)iters, (double)worst / 1e3,
           (double)iters / ((double)t_spawn / 1e9));
    if (pages)
        printf("stress: touched %ld pages: %.2f us/page\n", iters * pages,
               (double)t_touch / 1e3 / (double)(iters * pages));
    printf("stress: %ld minor page faults (self + children), %.0f faults/s\n", faults,
           (double)faults / ((double)total / 1e9));
    return failures ? 1 : 0;
}
