/* Network configuration (ioctls, rtnetlink for VLANs) and the network applets: ip, ping,
 * echod, echoc, traffic.
 *
 * Kernel command line, handled by /init (the kernel's own IP_PNP is off, so ip= reaches us):
 *   ip=ADDR[/PREFIX]                                   e.g. ip=10.0.0.2/24  (on eth0)
 *   ip=ADDR[/PREFIX]:SERVER:GATEWAY:NETMASK:HOST:IFACE:AUTOCONF
 *       the kernel's nfsroot form, e.g. ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off
 *       (empty fields are skipped; SERVER is ignored)
 *   ip=dhcp (also on, any, both)                       DHCP on eth0 (dhcp.c)
 *   ip=:::::IFACE:dhcp                                 DHCP on IFACE (AUTOCONF dhcp, on, any or
 *       both; the address, gateway and netmask fields are then ignored, HOST still applies)
 *   dhcp.timeout=SECONDS                               how long DHCP tries (default 10)
 *   vlan=NAME:PHYS                                     (dracut's form) creates 802.1Q VLAN
 *       device NAME on PHYS before ip= is applied, e.g. vlan=eth0.10:eth0; the VLAN id is
 *       the number after NAME's last '.', or after "vlan" (vlan0010, vlan10)
 * ip= may be given several times, one interface each, in order. Without a prefix or netmask:
 * /24. A VLAN device is configured like any other: ip=10.0.10.2:::255.255.255.0::eth0.10:off.
 */
#include "hv.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <ctype.h>
#include <linux/if_link.h>
#include <linux/if_vlan.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sockios.h>
#include <math.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ configuration */

static int ctl_sock(void)
{
    static int fd = -1;
    if (fd < 0)
        fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    return fd;
}

static void ifr_init(struct ifreq *ifr, const char *ifname)
{
    memset(ifr, 0, sizeof *ifr);
    snprintf(ifr->ifr_name, IFNAMSIZ, "%s", ifname);
}

static void set_sin(struct sockaddr *sa, struct in_addr a)
{
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr = a;
    memcpy(sa, &sin, sizeof sin);
}

static struct in_addr get_sin(const struct sockaddr *sa)
{
    struct sockaddr_in sin;
    memcpy(&sin, sa, sizeof sin);
    return sin.sin_addr;
}

static struct in_addr prefix_mask(int prefix)
{
    struct in_addr m;
    m.s_addr = prefix <= 0 ? 0 : htonl(0xffffffffu << (32 - (prefix > 32 ? 32 : prefix)));
    return m;
}

static int mask_prefix(struct in_addr m)
{
    uint32_t v = ntohl(m.s_addr);
    int n = 0;
    while (v & 0x80000000u) {
        n++;
        v <<= 1;
    }
    return n;
}

int net_if_up(const char *ifname, int up)
{
    struct ifreq ifr;
    ifr_init(&ifr, ifname);
    if (ioctl(ctl_sock(), SIOCGIFFLAGS, &ifr) < 0)
        return -1;
    if (up)
        ifr.ifr_flags |= IFF_UP;
    else
        ifr.ifr_flags &= ~IFF_UP;
    return ioctl(ctl_sock(), SIOCSIFFLAGS, &ifr);
}

int net_if_set_addr(const char *ifname, struct in_addr addr, int prefix)
{
    struct ifreq ifr;
    struct in_addr mask = prefix_mask(prefix), brd;
    ifr_init(&ifr, ifname);
    set_sin(&ifr.ifr_addr, addr);
    if (ioctl(ctl_sock(), SIOCSIFADDR, &ifr) < 0)
        return -1;
    set_sin(&ifr.ifr_netmask, mask);
    if (ioctl(ctl_sock(), SIOCSIFNETMASK, &ifr) < 0)
        return -1;
    if (prefix < 31) {
        brd.s_addr = addr.s_addr | ~mask.s_addr;
        set_sin(&ifr.ifr_broadaddr, brd);
        ioctl(ctl_sock(), SIOCSIFBRDADDR, &ifr);
    }
    return 0;
}

int net_add_default_route(struct in_addr gw, const char *ifname)
{
    struct rtentry rt;
    struct in_addr any = {0};
    char dev[IFNAMSIZ];
    memset(&rt, 0, sizeof rt);
    set_sin(&rt.rt_dst, any);
    set_sin(&rt.rt_genmask, any);
    set_sin(&rt.rt_gateway, gw);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    if (ifname) {
        snprintf(dev, sizeof dev, "%s", ifname);
        rt.rt_dev = dev;
    }
    return ioctl(ctl_sock(), SIOCADDRT, &rt);
}

/* Parse "A[/P]" into addr and prefix; prefix stays unchanged when absent. */
int parse_cidr(const char *s, struct in_addr *addr, int *prefix)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    char *slash = strchr(buf, '/');
    if (slash) {
        *slash = 0;
        char *end;
        long p = strtol(slash + 1, &end, 10);
        if (*end || p < 0 || p > 32)
            return -1;
        *prefix = (int)p;
    }
    return parse_ipv4(buf, addr);
}

static int is_dhcp(const char *autoconf)
{
    return !strcmp(autoconf, "dhcp") || !strcmp(autoconf, "on") || !strcmp(autoconf, "any") ||
           !strcmp(autoconf, "both");
}

static int configure_one(const char *spec, char *ifname_out, double dhcp_timeout)
{
    char buf[256], *fields[7] = {0};
    snprintf(buf, sizeof buf, "%s", spec);
    if (!strcmp(buf, "off") || !strcmp(buf, "none") || !buf[0])
        return 0;
    if (is_dhcp(buf)) {
        snprintf(ifname_out, IFNAMSIZ, "eth0");
        return net_dhcp("eth0", dhcp_timeout) == 0;
    }
    char *p = buf;
    for (int i = 0; i < 7 && p; i++) {
        fields[i] = p;
        p = strchr(p, ':');
        if (p)
            *p++ = 0;
    }
    if (fields[6] && (is_dhcp(fields[6]) || !strcmp(fields[6], "bootp") ||
                      !strcmp(fields[6], "rarp"))) {
        const char *ifname = fields[5] && fields[5][0] ? fields[5] : "eth0";
        if (fields[4] && fields[4][0])
            sethostname(fields[4], strlen(fields[4]));
        if (!is_dhcp(fields[6])) {
            fprintf(stderr, "init: ip=%s: %s is not supported (dhcp is)\n", spec, fields[6]);
            return 0;
        }
        snprintf(ifname_out, IFNAMSIZ, "%s", ifname);
        return net_dhcp(ifname, dhcp_timeout) == 0;
    }
    struct in_addr addr, gw, mask;
    int prefix = 24;
    if (parse_cidr(fields[0], &addr, &prefix) < 0) {
        fprintf(stderr, "init: ip=%s: bad address '%s'\n", spec, fields[0]);
        return 0;
    }
    if (fields[3] && fields[3][0]) {
        if (strchr(fields[3], '.') && parse_ipv4(fields[3], &mask) == 0)
            prefix = mask_prefix(mask);
        else
            prefix = atoi(fields[3]);
    }
    const char *ifname = fields[5] && fields[5][0] ? fields[5] : "eth0";
    if (fields[4] && fields[4][0])
        sethostname(fields[4], strlen(fields[4]));
    if (net_if_set_addr(ifname, addr, prefix) < 0 || net_if_up(ifname, 1) < 0) {
        fprintf(stderr, "init: ip=%s: %s: %s\n", spec, ifname, strerror(errno));
        return 0;
    }
    snprintf(ifname_out, IFNAMSIZ, "%s", ifname);
    printf("init: %s %s/%d", ifname, inet_ntoa(addr), prefix);
    if (fields[2] && fields[2][0]) {
        if (parse_ipv4(fields[2], &gw) < 0)
            fprintf(stderr, "\ninit: ip=%s: bad gateway '%s'\n", spec, fields[2]);
        else if (net_add_default_route(gw, ifname) < 0)
            fprintf(stderr, "\ninit: default route via %s: %s\n", fields[2], strerror(errno));
        else
            printf(" via %s", fields[2]);
    }
    printf("\n");
    return 1;
}

/* Until the kernel's link watcher has seen the carrier (up to a second after the device
 * is opened), the interface has no queue discipline and drops what is sent: wait for it
 * so that the network works as soon as the prompt appears. */
void net_wait_link_up(const char *ifname, uint64_t timeout_ns)
{
    char path[96], state[16];
    snprintf(path, sizeof path, "/sys/class/net/%s/operstate", ifname);
    uint64_t t0 = now_ns();
    for (;;) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, state, sizeof state - 1) : -1;
        if (fd >= 0)
            close(fd);
        state[n > 0 ? n : 0] = 0;
        if (!strncmp(state, "up", 2) || !strncmp(state, "unknown", 7))
            return;
        if (now_ns() - t0 > timeout_ns) {
            printf("init: %s: no link after %.1f s (operstate %s)\n", ifname,
                   (double)timeout_ns / 1e9, state[0] ? strtok(state, "\n") : "?");
            return;
        }
        usleep(10000);
    }
}

/* The VLAN id in a VLAN device's name: "eth0.10", "vlan10", "vlan0010"; -1 if none. */
static int vlan_id_from_name(const char *name)
{
    const char *dot = strrchr(name, '.');
    const char *digits = dot ? dot + 1 : !strncmp(name, "vlan", 4) ? name + 4 : NULL;
    if (!digits || !*digits)
        return -1;
    char *end;
    long id = strtol(digits, &end, 10);
    return *end || id < 1 || id > 4094 ? -1 : (int)id;
}

/* vlan=NAME:PHYS: create the device (PHYS is brought up: the VLAN's carrier follows it). */
static void configure_vlan(const char *spec)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", spec);
    char *phys = strchr(buf, ':');
    if (phys)
        *phys++ = 0;
    int id = vlan_id_from_name(buf);
    if (!phys || !*phys || id < 0) {
        fprintf(stderr, "init: vlan=%s: give vlan=NAME:PHYS with a VLAN id in NAME "
                        "(eth0.10:eth0)\n", spec);
        return;
    }
    if (net_if_up(phys, 1) < 0 || net_vlan_add(phys, buf, id) < 0) {
        fprintf(stderr, "init: vlan=%s: %s\n", spec, strerror(errno));
        return;
    }
    printf("init: %s vlan %d on %s\n", buf, id, phys);
}

/* Each "key=value" of the command line, in order, to fn (value as a NUL-terminated copy).
 * Words are split at spaces outside double quotes (an ip= inside hv.run="..." is not one). */
static void each_param(const char *cmdline, const char *key, void (*fn)(const char *, void *),
                       void *ctx)
{
    size_t klen = strlen(key);
    for (const char *p = cmdline; *p;) {
        while (*p == ' ')
            p++;
        size_t len = 0;
        for (int quoted = 0; p[len] && (quoted || p[len] != ' '); len++)
            if (p[len] == '"')
                quoted = !quoted;
        if (len > klen && strncmp(p, key, klen) == 0) {
            char value[256];
            snprintf(value, sizeof value, "%.*s", (int)(len - klen), p + klen);
            fn(value, ctx);
        }
        p += len;
    }
}

struct ip_ctx {
    int n;
    double dhcp_timeout;
    char configured[8][IFNAMSIZ];
};

static void vlan_param(const char *value, void *ctx)
{
    (void)ctx;
    configure_vlan(value);
}

static void timeout_param(const char *value, void *ctx)
{
    char *end;
    double t = strtod(value, &end);
    if (!*end && t > 0)
        ((struct ip_ctx *)ctx)->dhcp_timeout = t;
    else
        fprintf(stderr, "init: dhcp.timeout=%s: not a number of seconds\n", value);
}

static void ip_param(const char *value, void *ctx)
{
    struct ip_ctx *c = ctx;
    if (configure_one(value, c->configured[c->n < 8 ? c->n : 7], c->dhcp_timeout))
        c->n++;
}

int net_configure_from_cmdline(const char *cmdline)
{
    struct ip_ctx c = {.n = 0, .dhcp_timeout = 10};
    each_param(cmdline, "vlan=", vlan_param, NULL);
    each_param(cmdline, "dhcp.timeout=", timeout_param, &c);
    each_param(cmdline, "ip=", ip_param, &c);
    for (int i = 0; i < c.n && i < 8; i++)
        net_wait_link_up(c.configured[i], 3000000000ull);
    return c.n;
}

/* ------------------------------------------------------------------ rtnetlink (VLANs) */

static struct rtattr *nl_attr(struct nlmsghdr *h, size_t cap, int type, const void *data,
                              size_t len)
{
    struct rtattr *rta = (struct rtattr *)((char *)h + NLMSG_ALIGN(h->nlmsg_len));
    if (NLMSG_ALIGN(h->nlmsg_len) + RTA_SPACE(len) > cap)
        return NULL;
    rta->rta_type = (unsigned short)type;
    rta->rta_len = (unsigned short)RTA_LENGTH(len);
    if (len)
        memcpy(RTA_DATA(rta), data, len);
    h->nlmsg_len = NLMSG_ALIGN(h->nlmsg_len) + RTA_ALIGN(rta->rta_len);
    return rta;
}

static void nl_nest_end(struct nlmsghdr *h, struct rtattr *nest)
{
    nest->rta_len = (unsigned short)((char *)h + h->nlmsg_len - (char *)nest);
}

/* Send one request (NLM_F_ACK added) and wait for the kernel's ACK, error or NLMSG_DONE (a
 * dump's end); each other answer to it goes to each(h, ctx) (a dump's parts; each may be NULL).
 * 0, or -1 with errno set from the kernel's answer. */
static int rtnl_ask(struct nlmsghdr *req, void (*each)(const struct nlmsghdr *, void *),
                    void *ctx)
{
    static unsigned seq;
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return -1;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    req->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    req->nlmsg_seq = ++seq;
    int r = -1, err = EIO;
    if (sendto(fd, req, req->nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
        err = errno;
    else
        for (int done = 0; !done;) {
            char buf[8192] __attribute__((aligned(NLMSG_ALIGNTO)));
            ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            for (struct nlmsghdr *h = (struct nlmsghdr *)buf; !done && NLMSG_OK(h, (size_t)n);
                 h = NLMSG_NEXT(h, n)) {
                if (h->nlmsg_seq != req->nlmsg_seq)
                    continue;
                if (h->nlmsg_type == NLMSG_ERROR || h->nlmsg_type == NLMSG_DONE) {
                    const struct nlmsgerr *e = NLMSG_DATA(h);
                    err = h->nlmsg_type == NLMSG_ERROR ? -e->error : 0;
                    r = err ? -1 : 0;
                    done = 1;
                } else if (each) {
                    each(h, ctx);
                }
            }
        }
    close(fd);
    if (r < 0)
        errno = err;
    return r;
}

static int rtnl_talk(struct nlmsghdr *req)
{
    return rtnl_ask(req, NULL, NULL);
}

int net_vlan_add(const char *parent, const char *name, int id)
{
    unsigned link = if_nametoindex(parent);
    if (!link)
        return -1;
    if (id < 1 || id > 4094 || strlen(name) >= IFNAMSIZ) {
        errno = EINVAL;
        return -1;
    }
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
        char attrs[256];
    } req;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_len = NLMSG_LENGTH(sizeof req.i);
    req.h.nlmsg_type = RTM_NEWLINK;
    req.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
    req.i.ifi_family = AF_UNSPEC;
    uint32_t link32 = link;
    uint16_t vid = (uint16_t)id;
    nl_attr(&req.h, sizeof req, IFLA_LINK, &link32, sizeof link32);
    nl_attr(&req.h, sizeof req, IFLA_IFNAME, name, strlen(name) + 1);
    struct rtattr *info = nl_attr(&req.h, sizeof req, IFLA_LINKINFO, NULL, 0);
    nl_attr(&req.h, sizeof req, IFLA_INFO_KIND, "vlan", 4);
    struct rtattr *data = nl_attr(&req.h, sizeof req, IFLA_INFO_DATA, NULL, 0);
    nl_attr(&req.h, sizeof req, IFLA_VLAN_ID, &vid, sizeof vid);
    nl_nest_end(&req.h, data);
    nl_nest_end(&req.h, info);
    return rtnl_talk(&req.h);
}

int net_link_del(const char *name)
{
    unsigned index = if_nametoindex(name);
    if (!index)
        return -1;
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
    } req;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_len = NLMSG_LENGTH(sizeof req.i);
    req.h.nlmsg_type = RTM_DELLINK;
    req.i.ifi_family = AF_UNSPEC;
    req.i.ifi_index = (int)index;
    return rtnl_talk(&req.h);
}

/* ------------------------------------------------------------------ MAC, flush (clones) */

/* "52:54:00:12:34:56": six hex pairs separated by ':', a unicast address, not all zeros. */
int net_parse_mac(const char *s, uint8_t mac[6])
{
    uint8_t any = 0;
    for (int i = 0; i < 6; i++, s += 2) {
        if (!isxdigit((unsigned char)s[0]) || !isxdigit((unsigned char)s[1]))
            return -1;
        char pair[3] = {s[0], s[1], 0};
        mac[i] = (uint8_t)strtoul(pair, NULL, 16);
        any |= mac[i];
        if (i < 5 && s[2] != ':')
            return -1;
        s += i < 5;
    }
    return *s || (mac[0] & 1) || !any ? -1 : 0;
}

/* SIOCSIFHWADDR. virtio-net (IFF_LIVE_ADDR_CHANGE) takes a new MAC while up; a driver that
 * does not says EBUSY: then down, set, up. The neighbour tables are told (NETDEV_CHANGEADDR). */
int net_if_set_mac(const char *ifname, const uint8_t mac[6])
{
    struct ifreq ifr;
    ifr_init(&ifr, ifname);
    ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
    memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
    if (ioctl(ctl_sock(), SIOCSIFHWADDR, &ifr) == 0)
        return 0;
    if (errno != EBUSY)
        return -1;
    if (net_if_up(ifname, 0) < 0 || ioctl(ctl_sock(), SIOCSIFHWADDR, &ifr) < 0)
        return -1;
    return net_if_up(ifname, 1);
}

struct first_addr {
    unsigned index;
    int found, prefix;
    struct in_addr addr;
};

/* One RTM_NEWADDR of a dump: the first IPv4 address of f->index, if it is one. */
static void first_addr_of(const struct nlmsghdr *h, void *ctx)
{
    struct first_addr *f = ctx;
    const struct ifaddrmsg *ifa = NLMSG_DATA(h);
    if (f->found || h->nlmsg_type != RTM_NEWADDR || ifa->ifa_family != AF_INET ||
        ifa->ifa_index != f->index)
        return;
    int len = (int)IFA_PAYLOAD(h);
    for (const struct rtattr *rta = IFA_RTA(ifa); RTA_OK(rta, len); rta = RTA_NEXT(rta, len))
        if ((rta->rta_type == IFA_LOCAL || (rta->rta_type == IFA_ADDRESS && !f->found)) &&
            RTA_PAYLOAD(rta) == 4) {
            memcpy(&f->addr, RTA_DATA(rta), 4);
            f->found = 1;
        }
    f->prefix = ifa->ifa_prefixlen;
}

/* Remove every IPv4 address of ifname (RTM_DELADDR, one at a time until a dump finds none:
 * a primary's secondaries may go with it); the routes through them go too. "A/P A/P" of what
 * was removed in removed[n] ("" if none). 0, or -1 with errno. */
int net_addr_flush(const char *ifname, char *removed, size_t n)
{
    unsigned index = if_nametoindex(ifname);
    size_t used = 0;
    if (n)
        removed[0] = 0;
    if (!index)
        return -1;
    struct {
        struct nlmsghdr h;
        struct ifaddrmsg a;
        char attrs[64];
    } req;
    for (int round = 0; round < 256; round++) {
        memset(&req, 0, sizeof req); /* the dump of every IPv4 address */
        req.h.nlmsg_len = NLMSG_LENGTH(sizeof req.a);
        req.h.nlmsg_type = RTM_GETADDR;
        req.h.nlmsg_flags = NLM_F_DUMP;
        req.a.ifa_family = AF_INET;
        struct first_addr f = {.index = index};
        if (rtnl_ask(&req.h, first_addr_of, &f) < 0)
            return -1;
        if (!f.found)
            return 0;
        struct in_addr a = f.addr;
        int prefix = f.prefix;
        req.h.nlmsg_len = NLMSG_LENGTH(sizeof req.a); /* now the removal of the first */
        req.h.nlmsg_type = RTM_DELADDR;
        req.h.nlmsg_flags = 0;
        req.a.ifa_prefixlen = (unsigned char)prefix;
        req.a.ifa_index = index;
        nl_attr(&req.h, sizeof req, IFA_LOCAL, &a, 4);
        if (rtnl_talk(&req.h) < 0 && errno != EADDRNOTAVAIL)
            return -1;
        if (used < n)
            used += (size_t)snprintf(removed + used, n - used, "%s%s/%d", used ? " " : "",
                                     inet_ntoa(a), prefix);
    }
    errno = EBUSY; /* addresses that keep coming back */
    return -1;
}

/* A VLAN device's id and lower device (SIOCGIFVLAN); -1 if name is not a VLAN device. */
static int vlan_info(const char *name, char *real, size_t n)
{
    struct vlan_ioctl_args v;
    memset(&v, 0, sizeof v);
    v.cmd = GET_VLAN_VID_CMD;
    snprintf(v.device1, sizeof v.device1, "%s", name);
    if (ioctl(ctl_sock(), SIOCGIFVLAN, &v) < 0)
        return -1;
    int id = v.u.VID;
    memset(&v, 0, sizeof v);
    v.cmd = GET_VLAN_REALDEV_NAME_CMD;
    snprintf(v.device1, sizeof v.device1, "%s", name);
    if (ioctl(ctl_sock(), SIOCGIFVLAN, &v) < 0)
        return -1;
    snprintf(real, n, "%s", v.u.device2);
    return id;
}

/* ------------------------------------------------------------------ ip */

static void read_sys_stat(const char *ifname, const char *what, char *out, size_t n)
{
    char path[128];
    snprintf(path, sizeof path, "/sys/class/net/%s/statistics/%s", ifname, what);
    snprintf(out, n, "?");
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    if (fgets(out, (int)n, f))
        out[strcspn(out, "\n")] = 0;
    fclose(f);
}

static void show_if(unsigned idx, const char *name, int with_stats)
{
    struct ifreq ifr;
    int fd = ctl_sock();
    ifr_init(&ifr, name);
    int flags = ioctl(fd, SIOCGIFFLAGS, &ifr) == 0 ? ifr.ifr_flags : 0;
    static const struct { int bit; const char *name; } fl[] = {
        {IFF_UP, "UP"}, {IFF_LOOPBACK, "LOOPBACK"}, {IFF_BROADCAST, "BROADCAST"},
        {IFF_POINTOPOINT, "POINTOPOINT"}, {IFF_RUNNING, "RUNNING"}, {IFF_PROMISC, "PROMISC"},
        {IFF_MULTICAST, "MULTICAST"},
    };
    char real[IFNAMSIZ + 1];
    int vid = vlan_info(name, real, sizeof real);
    printf("%u: %s%s%s: <", idx, name, vid >= 0 ? "@" : "", vid >= 0 ? real : "");
    const char *sep = "";
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++)
        if (flags & fl[i].bit) {
            printf("%s%s", sep, fl[i].name);
            sep = ",";
        }
    ifr_init(&ifr, name);
    printf("> mtu %d\n", ioctl(fd, SIOCGIFMTU, &ifr) == 0 ? ifr.ifr_mtu : 0);
    ifr_init(&ifr, name);
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) == 0) {
        const unsigned char *m = (const unsigned char *)ifr.ifr_hwaddr.sa_data;
        printf("    link/%s %02x:%02x:%02x:%02x:%02x:%02x\n",
               (flags & IFF_LOOPBACK) ? "loopback" : "ether", m[0], m[1], m[2], m[3], m[4],
               m[5]);
    }
    if (vid >= 0)
        printf("    vlan id %d\n", vid);
    ifr_init(&ifr, name);
    if (ioctl(fd, SIOCGIFADDR, &ifr) == 0) {
        struct in_addr a = get_sin(&ifr.ifr_addr);
        ifr_init(&ifr, name);
        int prefix = ioctl(fd, SIOCGIFNETMASK, &ifr) == 0 ? mask_prefix(get_sin(&ifr.ifr_netmask)) : 32;
        printf("    inet %s/%d\n", inet_ntoa(a), prefix);
    }
    if (with_stats) {
        char rb[32], rp[32], re[32], rd[32], tb[32], tp[32], te[32], td[32];
        read_sys_stat(name, "rx_bytes", rb, sizeof rb);
        read_sys_stat(name, "rx_packets", rp, sizeof rp);
        read_sys_stat(name, "rx_errors", re, sizeof re);
        read_sys_stat(name, "rx_dropped", rd, sizeof rd);
        read_sys_stat(name, "tx_bytes", tb, sizeof tb);
        read_sys_stat(name, "tx_packets", tp, sizeof tp);
        read_sys_stat(name, "tx_errors", te, sizeof te);
        read_sys_stat(name, "tx_dropped", td, sizeof td);
        printf("    RX: bytes %s packets %s errors %s dropped %s\n", rb, rp, re, rd);
        printf("    TX: bytes %s packets %s errors %s dropped %s\n", tb, tp, te, td);
    }
}

static int ip_show(int with_stats, const char *only)
{
    struct if_nameindex *ifs = if_nameindex();
    if (!ifs) {
        errorf("ip: %s", strerror(errno));
        return 1;
    }
    for (struct if_nameindex *i = ifs; i->if_index; i++)
        if (!only || !strcmp(only, i->if_name))
            show_if(i->if_index, i->if_name, with_stats);
    if_freenameindex(ifs);
    return 0;
}

static int ip_route_show(void)
{
    FILE *f = fopen("/proc/net/route", "r");
    if (!f) {
        errorf("ip: /proc/net/route: %s", strerror(errno));
        return 1;
    }
    char line[256], ifname[IFNAMSIZ + 1];
    unsigned dst, gw, flags, mask, metric, refcnt, use;
    if (!fgets(line, sizeof line, f)) {
        fclose(f);
        return 0;
    }
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%16s %x %x %x %u %u %u %x", ifname, &dst, &gw, &flags, &refcnt, &use,
                   &metric, &mask) != 8)
            continue;
        struct in_addr d = {dst}, g = {gw}, m = {mask};
        if (dst == 0 && mask == 0)
            printf("default");
        else
            printf("%s/%d", inet_ntoa(d), mask_prefix(m));
        if (flags & RTF_GATEWAY)
            printf(" via %s", inet_ntoa(g));
        printf(" dev %s\n", ifname);
    }
    fclose(f);
    return 0;
}

/* ip link add [link IFACE] [name] NAME type vlan id ID  (iproute2's syntax, VLANs only) */
static int ip_link_add(int argc, char **argv)
{
    const char *link = NULL, *name = NULL, *type = NULL;
    int id = -1;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(arg, "link") && val)
            link = val, i++;
        else if ((!strcmp(arg, "name") || !strcmp(arg, "dev")) && val)
            name = val, i++;
        else if (!strcmp(arg, "type") && val)
            type = val, i++;
        else if (!strcmp(arg, "id") && val && type) {
            char *end;
            long v = strtol(val, &end, 10);
            id = *end || v < 1 || v > 4094 ? 0 : (int)v;
            i++;
        } else if (!name && !type)
            name = arg;
        else
            return usage_error("ip");
    }
    if (!type || strcmp(type, "vlan")) {
        errorf("ip: link add: only 'type vlan' is supported");
        return 2;
    }
    if (!link || !name || id < 1) {
        errorf("ip: link add: give link IFACE name NAME type vlan id ID (1-4094)");
        return 2;
    }
    if (net_vlan_add(link, name, id) < 0) {
        errorf("ip: link add %s: %s", name, strerror(errno));
        return 1;
    }
    return 0;
}

int ap_ip(int argc, char **argv)
{
    const char *obj = argc > 1 ? argv[1] : "addr";
    const char *verb = argc > 2 ? argv[2] : "show";
    int is_addr = !strncmp(obj, "addr", strlen(obj) ? strlen(obj) : 1) ||
                  !strcmp(obj, "address");
    int is_link = !strncmp(obj, "link", strlen(obj) ? strlen(obj) : 1);
    int is_route = !strncmp(obj, "route", strlen(obj) ? strlen(obj) : 1);
    if (!strcmp(verb, "show") || !strcmp(verb, "list") || !strcmp(verb, "ls")) {
        const char *only = argc > 3 ? argv[argc - 1] : NULL;
        if (is_route)
            return ip_route_show();
        if (is_addr || is_link)
            return ip_show(is_link, only);
    }
    if (is_addr && !strcmp(verb, "add") && argc == 6 && !strcmp(argv[4], "dev")) {
        struct in_addr a;
        int prefix = 24;
        if (parse_cidr(argv[3], &a, &prefix) < 0)
            return usage_error("ip");
        if (net_if_set_addr(argv[5], a, prefix) < 0) {
            errorf("ip: %s: %s", argv[5], strerror(errno));
            return 1;
        }
        return 0;
    }
    if (is_addr && !strcmp(verb, "flush") && (argc == 4 || (argc == 5 && !strcmp(argv[3], "dev")))) {
        char removed[256];
        if (net_addr_flush(argv[argc - 1], removed, sizeof removed) < 0) {
            errorf("ip: %s: %s", argv[argc - 1], strerror(errno));
            return 1;
        }
        return 0;
    }
    if (is_link && !strcmp(verb, "add"))
        return ip_link_add(argc - 3, argv + 3);
    if (is_link && (!strcmp(verb, "del") || !strcmp(verb, "delete")) && argc >= 4) {
        const char *ifname = argc == 5 && !strcmp(argv[3], "dev") ? argv[4] : argv[3];
        if (argc > 5 || (argc == 5 && strcmp(argv[3], "dev")))
            return usage_error("ip");
        if (net_link_del(ifname) < 0) {
            errorf("ip: %s: %s", ifname, strerror(errno));
            return 1;
        }
        return 0;
    }
    if (is_link && !strcmp(verb, "set") && argc >= 5) {
        const char *ifname = argv[3][0] == 'd' && !strcmp(argv[3], "dev") && argc >= 6 ? argv[4]
                                                                                      : argv[3];
        const char *what = argv[argc - 1];
        int r;
        if (!strcmp(argv[argc - 2], "address")) {
            uint8_t mac[6];
            if (net_parse_mac(what, mac) < 0) {
                errorf("ip: bad MAC '%s': give six hex bytes, unicast and not all zeros, "
                       "e.g. 52:54:00:12:34:56", what);
                return 2;
            }
            r = net_if_set_mac(ifname, mac);
        } else if (!strcmp(argv[argc - 2], "mtu")) {
            struct ifreq ifr;
            ifr_init(&ifr, ifname);
            ifr.ifr_mtu = atoi(what);
            r = ioctl(ctl_sock(), SIOCSIFMTU, &ifr);
        } else if (!strcmp(what, "up") || !strcmp(what, "down")) {
            r = net_if_up(ifname, what[0] == 'u');
        } else {
            return usage_error("ip");
        }
        if (r < 0) {
            errorf("ip: %s: %s", ifname, strerror(errno));
            return 1;
        }
        return 0;
    }
    if (is_route && !strcmp(verb, "add") && argc >= 6 && !strcmp(argv[3], "default") &&
        !strcmp(argv[4], "via")) {
        struct in_addr gw;
        if (parse_ipv4(argv[5], &gw) < 0)
            return usage_error("ip");
        const char *dev = argc >= 8 && !strcmp(argv[6], "dev") ? argv[7] : NULL;
        if (net_add_default_route(gw, dev) < 0) {
            errorf("ip: route: %s", strerror(errno));
            return 1;
        }
        return 0;
    }
    fprintf(stderr,
            "usage: ip addr|link [show [IFACE]]      interfaces, addresses (link: + counters)\n"
            "       ip addr add ADDR/PREFIX dev IFACE\n"
            "       ip addr flush [dev] IFACE          remove every IPv4 address of IFACE\n"
            "       ip link set IFACE up|down|mtu N|address MAC\n"
            "       ip link add link IFACE name NAME type vlan id ID   (802.1Q; IFACE up first)\n"
            "       ip link del [dev] NAME\n"
            "       ip route [show] | ip route add default via GW [dev IFACE]\n");
    return 2;
}

/* ------------------------------------------------------------------ helpers */

static volatile sig_atomic_t g_stop;

static void on_sigint(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* SIGINT ends the loop of a network tool (no SA_RESTART: blocking calls return EINTR). */
static void catch_sigint(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    g_stop = 0;
}

static int make_addr(const char *host, int port, struct sockaddr_in *sin)
{
    memset(sin, 0, sizeof *sin);
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    if (!host) {
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
        return 0;
    }
    if (parse_ipv4(host, &sin->sin_addr) < 0) {
        errorf("%s: not an IPv4 address (no DNS here)", host);
        return -1;
    }
    return 0;
}

static int parse_port(const char *s)
{
    char *end;
    long p = strtol(s, &end, 10);
    return (*end || p <= 0 || p > 65535) ? -1 : (int)p;
}

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

struct rtt_stats {
    uint64_t min, max, sum;
    unsigned n;
};

static void rtt_add(struct rtt_stats *s, uint64_t v)
{
    if (!s->n || v < s->min)
        s->min = v;
    if (v > s->max)
        s->max = v;
    s->sum += v;
    s->n++;
}

static void rtt_print(const struct rtt_stats *s)
{
    if (s->n)
        printf("rtt min/avg/max = %.3f/%.3f/%.3f ms\n", ms(s->min), ms(s->sum / s->n),
               ms(s->max));
}

/* Wait until fd is readable or the deadline (now_ns based) passes: 1 readable, 0 timeout,
 * -1 interrupted. */
static int wait_readable(int fd, uint64_t deadline)
{
    for (;;) {
        if (g_stop)
            return -1;
        uint64_t now = now_ns();
        if (now >= deadline)
            return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        uint64_t left = (deadline - now + 999999) / 1000000;
        int r = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

static double parse_seconds(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    return (*end || v < 0 || isnan(v)) ? -1 : v;
}

/* ------------------------------------------------------------------ ping */

static uint16_t inet_csum(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (len & 1)
        sum += (uint32_t)p[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return htons((uint16_t)~sum);
}

int ap_ping(int argc, char **argv)
{
    long count = -1;
    double interval = 1.0, wait_s = 1.0;
    long size = 56;
    int quiet = 0, opt;
    optind = 1;
    while ((opt = getopt(argc, argv, "c:i:s:W:q")) != -1) {
        switch (opt) {
        case 'c': count = atol(optarg); break;
        case 'i': interval = parse_seconds(optarg); break;
        case 's': size = atol(optarg); break;
        case 'W': wait_s = parse_seconds(optarg); break;
        case 'q': quiet = 1; break;
        default: return usage_error("ping");
        }
    }
    if (optind != argc - 1 || interval < 0 || wait_s < 0 || size < 8 || size > 65000)
        return usage_error("ping");
    struct sockaddr_in dst;
    if (make_addr(argv[optind], 0, &dst) < 0)
        return 2;
    int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
    if (fd < 0) {
        errorf("ping: raw socket: %s", strerror(errno));
        return 2;
    }
    catch_sigint();
    uint16_t ident = (uint16_t)getpid();
    size_t pktlen = 8 + (size_t)size;
    uint8_t *pkt = calloc(1, pktlen), buf[65536];
    printf("PING %s: %ld data bytes\n", argv[optind], size);
    struct rtt_stats st = {0};
    unsigned long sent = 0, received = 0, dups = 0;
    uint64_t start = now_ns(), next_send = start, last_deadline = 0;
    uint8_t seen[8192] = {0};
    while (!g_stop) {
        uint64_t now = now_ns();
        if ((count < 0 || (long)sent < count) && now >= next_send) {
            struct icmphdr *ic = (struct icmphdr *)pkt;
            memset(pkt, 0, 8);
            ic->type = ICMP_ECHO;
            ic->un.echo.id = htons(ident);
            ic->un.echo.sequence = htons((uint16_t)(sent + 1));
            for (size_t i = 8; i < pktlen; i++)
                pkt[i] = (uint8_t)i;
            if (pktlen >= 16)
                memcpy(pkt + 8, &now, 8);
            ic->checksum = inet_csum(pkt, pktlen);
            if (sendto(fd, pkt, pktlen, 0, (struct sockaddr *)&dst, sizeof dst) < 0)
                errorf("ping: sendto: %s", strerror(errno));
            sent++;
            next_send = now + (uint64_t)(interval * 1e9);
            if (count >= 0 && (long)sent >= count)
                last_deadline = now + (uint64_t)(wait_s * 1e9);
        }
        if (count >= 0 && (long)sent >= count && (received >= sent || now >= last_deadline))
            break;
        uint64_t deadline = (count >= 0 && (long)sent >= count) ? last_deadline : next_send;
        int r = wait_readable(fd, deadline);
        if (r < 0)
            break;
        if (r == 0)
            continue;
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        uint64_t t = now_ns();
        if (n < (ssize_t)sizeof(struct iphdr))
            continue;
        const struct iphdr *ip = (const struct iphdr *)buf;
        size_t hl = (size_t)ip->ihl * 4;
        if ((size_t)n < hl + 8)
            continue;
        const struct icmphdr *ic = (const struct icmphdr *)(buf + hl);
        if (ic->type != ICMP_ECHOREPLY || ntohs(ic->un.echo.id) != ident)
            continue;
        unsigned seq = ntohs(ic->un.echo.sequence);
        uint64_t ts = 0;
        if ((size_t)n >= hl + 16)
            memcpy(&ts, buf + hl + 8, 8);
        uint64_t rtt = ts && ts <= t ? t - ts : 0;
        int dup = seen[seq % 65536 / 8] & (1 << (seq % 8));
        if (dup) {
            dups++;
        } else {
            seen[seq % 65536 / 8] |= (uint8_t)(1 << (seq % 8));
            received++;
            rtt_add(&st, rtt);
        }
        if (!quiet)
            printf("%zd bytes from %s: icmp_seq=%u ttl=%d time=%.3f ms%s\n", n - (ssize_t)hl,
                   inet_ntoa(from.sin_addr), seq, ip->ttl, ms(rtt), dup ? " (DUP!)" : "");
    }
    printf("--- %s ping statistics ---\n", argv[optind]);
    printf("%lu packets transmitted, %lu received, ", sent, received);
    if (dups)
        printf("+%lu duplicates, ", dups);
    printf("%.0f%% packet loss, time %.0f ms\n",
           sent ? 100.0 * (double)(sent - (received > sent ? sent : received)) / (double)sent : 0.0,
           ms(now_ns() - start));
    rtt_print(&st);
    free(pkt);
    close(fd);
    return received ? 0 : 1;
}

/* ------------------------------------------------------------------ echod */

#define MAX_CLIENTS 32

int ap_echod(int argc, char **argv)
{
    int udp = 0, tcp = 0, verbose = 0, opt;
    optind = 1;
    while ((opt = getopt(argc, argv, "utv")) != -1) {
        switch (opt) {
        case 'u': udp = 1; break;
        case 't': tcp = 1; break;
        case 'v': verbose = 1; break;
        default: return usage_error("echod");
        }
    }
    if (!udp && !tcp)
        udp = tcp = 1;
    int port = optind < argc ? parse_port(argv[optind]) : 7;
    if (port < 0 || optind < argc - 1)
        return usage_error("echod");
    struct sockaddr_in any;
    make_addr(NULL, port, &any);
    struct pollfd fds[2 + MAX_CLIENTS];
    int nfds = 0, one = 1;
    int ufd = -1, lfd = -1;
    if (udp) {
        ufd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (ufd < 0 || bind(ufd, (struct sockaddr *)&any, sizeof any) < 0) {
            errorf("echod: udp port %d: %s", port, strerror(errno));
            return 1;
        }
    }
    if (tcp) {
        lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&any, sizeof any) < 0 ||
            listen(lfd, 16) < 0) {
            errorf("echod: tcp port %d: %s", port, strerror(errno));
            return 1;
        }
    }
    fds[nfds++] = (struct pollfd){.fd = ufd, .events = POLLIN};
    fds[nfds++] = (struct pollfd){.fd = lfd, .events = POLLIN};
    for (int i = 0; i < MAX_CLIENTS; i++)
        fds[nfds++] = (struct pollfd){.fd = -1, .events = POLLIN};
    printf("echod: listening on%s%s port %d\n", udp ? " udp" : "", tcp ? " tcp" : "", port);
    fflush(stdout);
    catch_sigint();
    static uint8_t buf[65536];
    unsigned long long udp_pkts = 0, tcp_bytes = 0, conns = 0;
    while (!g_stop) {
        if (poll(fds, (nfds_t)nfds, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (ufd >= 0 && (fds[0].revents & POLLIN)) {
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            ssize_t n = recvfrom(ufd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
            if (n >= 0) {
                sendto(ufd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
                udp_pkts++;
                if (verbose)
                    printf("udp %zd bytes from %s:%d\n", n, inet_ntoa(from.sin_addr),
                           ntohs(from.sin_port));
            }
        }
        if (lfd >= 0 && (fds[1].revents & POLLIN)) {
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            int c = accept4(lfd, (struct sockaddr *)&from, &fl, SOCK_CLOEXEC);
            if (c >= 0) {
                int slot = -1;
                for (int i = 2; i < nfds; i++)
                    if (fds[i].fd < 0) {
                        slot = i;
                        break;
                    }
                if (slot < 0) {
                    close(c);
                } else {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    fds[slot].fd = c;
                    conns++;
                    if (verbose)
                        printf("tcp connection from %s:%d\n", inet_ntoa(from.sin_addr),
                               ntohs(from.sin_port));
                }
            }
        }
        for (int i = 2; i < nfds; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t n = read(fds[i].fd, buf, sizeof buf);
            ssize_t off = 0;
            while (n > 0 && off < n) {
                ssize_t w = write(fds[i].fd, buf + off, (size_t)(n - off));
                if (w <= 0)
                    break;
                off += w;
            }
            if (n <= 0 || off < n) {
                close(fds[i].fd);
                fds[i].fd = -1;
            } else {
                tcp_bytes += (unsigned long long)n;
            }
        }
        fflush(stdout);
    }
    printf("echod: %llu udp datagrams, %llu tcp connections, %llu tcp bytes echoed\n", udp_pkts,
           conns, tcp_bytes);
    return 0;
}

/* ------------------------------------------------------------------ echoc */

static int read_full(int fd, uint8_t *buf, size_t len, uint64_t deadline)
{
    size_t got = 0;
    while (got < len) {
        int r = wait_readable(fd, deadline);
        if (r <= 0)
            return r;
        ssize_t n = read(fd, buf + got, len - got);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 1;
}

int ap_echoc(int argc, char **argv)
{
    int tcp = 0, opt;
    long count = 1, size = 0;
    double wait_s = 2.0;
    const char *msg = NULL;
    optind = 1;
    while ((opt = getopt(argc, argv, "utc:s:W:m:")) != -1) {
        switch (opt) {
        case 'u': tcp = 0; break;
        case 't': tcp = 1; break;
        case 'c': count = atol(optarg); break;
        case 's': size = atol(optarg); break;
        case 'W': wait_s = parse_seconds(optarg); break;
        case 'm': msg = optarg; break;
        default: return usage_error("echoc");
        }
    }
    if (optind >= argc || optind < argc - 2 || count < 1 || size < 0 || size > 65000 ||
        wait_s < 0)
        return usage_error("echoc");
    int port = optind + 1 < argc ? parse_port(argv[optind + 1]) : 7;
    struct sockaddr_in dst;
    if (port < 0 || make_addr(argv[optind], port, &dst) < 0)
        return 2;
    if (!msg && !size)
        msg = "hello from hvfabric";
    size_t len = msg ? strlen(msg) : (size_t)size;
    uint8_t *out = malloc(len + 1), *in = malloc(len + 65536);
    if (msg)
        memcpy(out, msg, len);
    else
        for (size_t i = 0; i < len; i++)
            out[i] = (uint8_t)('a' + i % 26);
    catch_sigint();
    int fd = socket(AF_INET, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0);
    uint64_t t0 = now_ns();
    if (fd < 0 || connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) {
        errorf("echoc: connect %s:%d: %s", argv[optind], port, strerror(errno));
        return 1;
    }
    if (tcp) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        printf("connected to %s:%d in %.3f ms\n", argv[optind], port, ms(now_ns() - t0));
    }
    struct rtt_stats st = {0};
    long ok = 0, i;
    for (i = 0; i < count && !g_stop; i++) {
        uint64_t t = now_ns();
        if (write(fd, out, len) != (ssize_t)len) {
            errorf("echoc: send: %s", strerror(errno));
            break;
        }
        uint64_t deadline = t + (uint64_t)(wait_s * 1e9);
        int r;
        ssize_t n = (ssize_t)len;
        if (tcp) {
            r = read_full(fd, in, len, deadline);
        } else {
            r = wait_readable(fd, deadline);
            if (r > 0) {
                n = read(fd, in, len + 65536);
                if (n < 0) {
                    errorf("echoc: %s", strerror(errno));
                    r = -1;
                }
            }
        }
        if (r < 0 && g_stop)
            break;
        if (r <= 0) {
            printf("seq=%ld: %s\n", i + 1, r == 0 ? "timeout" : "connection lost");
            if (r < 0)
                break;
            continue;
        }
        uint64_t rtt = now_ns() - t;
        int same = n == (ssize_t)len && memcmp(in, out, len) == 0;
        rtt_add(&st, rtt);
        ok += same;
        if (msg && count == 1)
            printf("reply: %.*s\n", (int)n, (const char *)in);
        printf("seq=%ld: %zd bytes in %.3f ms%s\n", i + 1, n, ms(rtt), same ? "" : " (MISMATCH)");
    }
    printf("--- %s %s:%d: %ld sent, %ld echoed intact\n", tcp ? "tcp" : "udp", argv[optind],
           port, i, ok);
    rtt_print(&st);
    close(fd);
    free(out);
    free(in);
    return ok == count ? 0 : 1;
}

/* ------------------------------------------------------------------ traffic */

#define TR_MAGIC 0x48565452u /* "HVTR" */

struct tr_hdr {
    uint32_t magic;
    uint32_t end; /* 1: last datagram, seq = number of data datagrams sent */
    uint64_t seq;
};

static void report_rate(const char *what, uint64_t bytes, uint64_t ns)
{
    double s = (double)ns / 1e9;
    if (s <= 0)
        s = 1e-9;
    printf("%s %llu bytes in %.3f s = %.2f Mbit/s (%.2f MiB/s)\n", what,
           (unsigned long long)bytes, s, (double)bytes * 8 / s / 1e6,
           (double)bytes / s / 1048576.0);
}

static int traffic_send(int tcp, int port, size_t chunk, double mbit, const char *host,
                        uint64_t total)
{
    struct sockaddr_in dst;
    if (make_addr(host, port, &dst) < 0)
        return 2;
    int fd = socket(AF_INET, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) {
        errorf("traffic: connect %s:%d: %s", host, port, strerror(errno));
        return 1;
    }
    uint8_t *buf = calloc(1, chunk);
    for (size_t i = 0; i < chunk; i++)
        buf[i] = (uint8_t)i;
    uint64_t sent = 0, seq = 0, t0 = now_ns();
    while (sent < total && !g_stop) {
        size_t n = total - sent < chunk ? (size_t)(total - sent) : chunk;
        if (!tcp) {
            if (n < sizeof(struct tr_hdr))
                n = sizeof(struct tr_hdr);
            struct tr_hdr h = {TR_MAGIC, 0, seq};
            memcpy(buf, &h, sizeof h);
        }
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ENOBUFS || errno == EAGAIN) {
                usleep(100);
                continue;
            }
            if (!tcp && errno == ECONNREFUSED)
                continue;   /* ICMP port unreachable from a late receiver */
            errorf("traffic: send: %s", strerror(errno));
            break;
        }
        sent += (uint64_t)w;
        seq++;
        if (mbit > 0) {
            uint64_t due = t0 + (uint64_t)((double)sent * 8 / (mbit * 1e6) * 1e9);
            uint64_t now = now_ns();
            if (due > now)
                usleep((useconds_t)((due - now) / 1000));
        }
    }
    if (tcp) {
        shutdown(fd, SHUT_WR);   /* wait for the receiver's close: all bytes delivered */
        uint8_t sink[256];
        while (!g_stop && wait_readable(fd, now_ns() + 30000000000ull) > 0 &&
               read(fd, sink, sizeof sink) > 0) {
        }
    } else {
        struct tr_hdr h = {TR_MAGIC, 1, seq};
        for (int i = 0; i < 3; i++) {
            send(fd, &h, sizeof h, 0);
            usleep(10000);
        }
    }
    uint64_t dt = now_ns() - t0;
    char what[64];
    snprintf(what, sizeof what, "traffic: sent (%s, %llu datagrams/writes)", tcp ? "tcp" : "udp",
             (unsigned long long)seq);
    report_rate(what, sent, dt);
    close(fd);
    free(buf);
    return sent >= total ? 0 : 1;
}

static int traffic_recv(int tcp, int port, int once)
{
    struct sockaddr_in any;
    make_addr(NULL, port, &any);
    int one = 1;
    int fd = socket(AF_INET, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&any, sizeof any) < 0 ||
        (tcp && listen(fd, 4) < 0)) {
        errorf("traffic: port %d: %s", port, strerror(errno));
        return 1;
    }
    printf("traffic: receiving on %s port %d\n", tcp ? "tcp" : "udp", port);
    fflush(stdout);
    static uint8_t buf[65536];
    while (!g_stop) {
        uint64_t bytes = 0, pkts = 0, expected = 0, t0 = 0, t1 = 0;
        if (tcp) {
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            int c = accept4(fd, (struct sockaddr *)&from, &fl, SOCK_CLOEXEC);
            if (c < 0)
                continue;
            t0 = now_ns();
            ssize_t n;
            while ((n = read(c, buf, sizeof buf)) > 0)
                bytes += (uint64_t)n;
            t1 = now_ns();
            close(c);
            char what[80];
            snprintf(what, sizeof what, "traffic: received from %s:", inet_ntoa(from.sin_addr));
            report_rate(what, bytes, t1 - t0);
        } else {
            for (;;) {
                int r = wait_readable(fd, pkts ? now_ns() + 2000000000ull : UINT64_MAX);
                if (r <= 0)
                    break;
                ssize_t n = recv(fd, buf, sizeof buf, 0);
                struct tr_hdr h;
                if (n < (ssize_t)sizeof h)
                    continue;
                memcpy(&h, buf, sizeof h);
                if (h.magic != TR_MAGIC)
                    continue;
                if (h.end) {
                    if (!pkts)
                        continue;   /* a duplicate end marker of the previous run */
                    expected = h.seq;
                    break;
                }
                if (!pkts)
                    t0 = now_ns();
                t1 = now_ns();
                pkts++;
                bytes += (uint64_t)n;
                if (h.seq + 1 > expected)
                    expected = h.seq + 1;
            }
            if (!pkts)
                continue;
            report_rate("traffic: received", bytes, t1 - t0);
            printf("traffic: %llu of %llu datagrams (%.2f%% loss)\n", (unsigned long long)pkts,
                   (unsigned long long)expected,
                   expected ? 100.0 * (double)(expected - (pkts > expected ? expected : pkts)) /
                                  (double)expected
                            : 0.0);
        }
        fflush(stdout);
        if (once)
            break;
    }
    close(fd);
    return 0;
}

int ap_traffic(int argc, char **argv)
{
    static const char usage[] =
        "usage: traffic send [-u|-t] [-p PORT] [-l CHUNK] [-b MBIT] ADDR BYTES\n"
        "       traffic recv [-u|-t] [-p PORT] [-1]\n"
        "  TCP (default) or UDP to port 5001; BYTES takes k/M/G suffixes; -b paces the\n"
        "  sender; the receiver reports throughput (UDP: and loss); -1: one run only.\n";
    if (argc < 2 || (strcmp(argv[1], "send") && strcmp(argv[1], "recv"))) {
        fputs(usage, stderr);
        return 2;
    }
    int send_mode = !strcmp(argv[1], "send");
    int tcp = 1, port = 5001, once = 0, opt;
    uint64_t chunk = 0, total = 0;
    double mbit = 0;
    optind = 2;
    while ((opt = getopt(argc, argv, "utp:l:b:1")) != -1) {
        switch (opt) {
        case 'u': tcp = 0; break;
        case 't': tcp = 1; break;
        case 'p': port = parse_port(optarg); break;
        case 'l':
            if (parse_size(optarg, &chunk) < 0 || chunk == 0 || chunk > 65000)
                port = -1;
            break;
        case 'b': mbit = parse_seconds(optarg); break;
        case '1': once = 1; break;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (port < 0 || mbit < 0) {
        fputs(usage, stderr);
        return 2;
    }
    catch_sigint();
    if (!send_mode) {
        if (optind != argc) {
            fputs(usage, stderr);
            return 2;
        }
        return traffic_recv(tcp, port, once);
    }
    if (optind != argc - 2 || parse_size(argv[optind + 1], &total) < 0) {
        fputs(usage, stderr);
        return 2;
    }
    if (!chunk)
        chunk = tcp ? 65536 : 1400;
    return traffic_send(tcp, port, (size_t)chunk, mbit, argv[optind], total);
}
