/* hvfabric guest userland: one static multi-call binary (argv[0] dispatch).
 *
 * /init, /bin/sh and every /bin/<applet> in the initramfs are symlinks to /bin/hvbox.
 * Built with: python -m ziglang cc -target riscv64-linux-musl -static -Os
 */
#ifndef HV_USERLAND_H
#define HV_USERLAND_H

#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>

typedef int (*applet_fn)(int argc, char **argv);

struct applet {
    const char *name;
    applet_fn fn;
    const char *usage;  /* one line: arguments and what it does */
};

/* main.c */
extern const struct applet applets[];
const struct applet *find_applet(const char *name);
int run_applet(int argc, char **argv);      /* dispatch on argv[0]'s base name */
uint64_t now_ns(void);                      /* CLOCK_MONOTONIC */
int parse_size(const char *s, uint64_t *out); /* 4096, 4k, 1M, 2G */
void errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int usage_error(const char *name);          /* prints "usage: ..." and returns 2 */
int parse_ipv4(const char *s, struct in_addr *out);

/* agent.c: hv exec / hv cp (hv/_exec.py is the host's side, docs/EXEC.md the protocol) */
#define HV_AGENT_PORT 1000          /* AF_VSOCK port the agent listens on */
#define HV_FRAME_MAX (1u << 20)     /* largest frame payload either side accepts */
int ap_agent(int argc, char **argv);
int ap_tty(int argc, char **argv);
void agent_boot(void);              /* init: mount devpts, start the agent in the background */

/* init.c */
int init_main(int argc, char **argv);

/* sh.c */
int sh_main(int argc, char **argv);
int sh_builtin_help(int argc, char **argv);

/* net.c */
int net_if_up(const char *ifname, int up);
int net_if_set_addr(const char *ifname, struct in_addr addr, int prefix);
int net_add_default_route(struct in_addr gw, const char *ifname);
int net_configure_from_cmdline(const char *cmdline); /* vlan=, ip=; returns #configured */
void net_wait_link_up(const char *ifname, uint64_t timeout_ns);
int net_vlan_add(const char *parent, const char *name, int id); /* rtnetlink; -1 + errno */
int net_link_del(const char *name);
int parse_cidr(const char *s, struct in_addr *addr, int *prefix); /* "A[/P]"; P kept if absent */
int net_parse_mac(const char *s, uint8_t mac[6]);   /* unicast "52:54:00:12:34:56"; 0 or -1 */
int net_if_set_mac(const char *ifname, const uint8_t mac[6]);
int net_addr_flush(const char *ifname, char *removed, size_t n); /* every IPv4 address */

/* cloned.c: a clone's reaction (new MAC, no old address, new name, hook, new address) */
int ap_cloned(int argc, char **argv);

/* dhcp.c */
int net_dhcp(const char *ifname, double timeout_s); /* get a lease, configure; 0 or -1 */
int ap_dhcp(int argc, char **argv);

/* applets */
int ap_echo(int argc, char **argv);
int ap_cat(int argc, char **argv);
int ap_ls(int argc, char **argv);
int ap_mkdir(int argc, char **argv);
int ap_rm(int argc, char **argv);
int ap_mount(int argc, char **argv);
int ap_umount(int argc, char **argv);
int ap_dd(int argc, char **argv);
int ap_sync(int argc, char **argv);
int ap_dmesg(int argc, char **argv);
int ap_ps(int argc, char **argv);
int ap_kill(int argc, char **argv);
int ap_uname(int argc, char **argv);
int ap_sleep(int argc, char **argv);
int ap_true(int argc, char **argv);
int ap_false(int argc, char **argv);
int ap_ip(int argc, char **argv);
int ap_ping(int argc, char **argv);
int ap_echod(int argc, char **argv);
int ap_echoc(int argc, char **argv);
int ap_traffic(int argc, char **argv);
int ap_poweroff(int argc, char **argv);
int ap_reboot(int argc, char **argv);
int ap_stress(int argc, char **argv);

/* vsock.c */
int ap_vsockecho(int argc, char **argv);
int ap_vsockcat(int argc, char **argv);

#endif
