/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Keelson Service load balancer: map layout shared by the BPF programs and
 * the Rust side (agent/ebpf/src/layout.rs mirrors every struct here byte for
 * byte; its unit tests check sizes and offsets). Addresses and ports are in
 * network byte order, as the kernel hands them to the programs. Every struct
 * is packed by construction (no implicit padding): explicit pad fields are
 * zero.
 */
#ifndef KEELSON_LB_H
#define KEELSON_LB_H

#include <linux/types.h>

/* Map sizes. */
#define KLB_MAX_SERVICES 65536
#define KLB_MAX_BACKENDS 262144
#define KLB_MAX_REVNAT 131072
#define KLB_MAX_AFFINITY 65536
#define KLB_MAX_CT 131072

/* lb_svc_val.flags */
#define KLB_F_NODEPORT 0x1      /* key addr is 0: any local address (TC only) */
#define KLB_F_EXTERNAL 0x2      /* externalIP / LoadBalancer IP (TC and socket) */
#define KLB_F_EXT_LOCAL 0x4     /* externalTrafficPolicy: Local */
#define KLB_F_AFFINITY 0x8      /* sessionAffinity: ClientIP */

/* Packet mark the TC program sets on the first packet of a NodePort /
 * external connection with externalTrafficPolicy: Cluster; the proxy's
 * nftables table keelson_ebpf masquerades marked packets (keep in sync with
 * keelson_ebpf::layout::MASQ_MARK). */
#define KLB_MASQ_MARK 0x4000

/* klb_services: one entry per Service frontend (VIP, port, protocol). */
struct lb_svc_key {
	__u32 addr;  /* VIP; 0 for a NodePort (any node address) */
	__u16 port;  /* frontend port */
	__u8 proto;  /* IPPROTO_TCP / IPPROTO_UDP / IPPROTO_SCTP */
	__u8 pad;
};

struct lb_svc_val {
	__u32 id;               /* service id: key of its backend slots */
	__u16 count;            /* number of backend slots; 0: reject */
	__u16 flags;            /* KLB_F_* */
	__u32 affinity_timeout; /* seconds; used with KLB_F_AFFINITY */
};

/* klb_backends: slots 0..count-1 of each service id. */
struct lb_be_key {
	__u32 id;
	__u32 slot;
};

struct lb_be_val {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

/*
 * klb_revnat (LRU): socket cookie + backend -> frontend, written by
 * connect4/sendmsg4, read by recvmsg4/getpeername4 so the application sees
 * the VIP it asked for.
 */
struct lb_revnat_key {
	__u64 cookie;
	__u32 addr;  /* backend */
	__u16 port;
	__u16 pad;
};

struct lb_revnat_val {
	__u32 addr;  /* frontend (VIP) */
	__u16 port;
	__u16 pad;
};

/*
 * klb_affinity (LRU): client + service id -> backend chosen last, for
 * sessionAffinity: ClientIP. client is the netns cookie for socket-level
 * balancing (one pod = one netns) and the IPv4 source address (zero-extended)
 * for the TC program.
 */
struct lb_aff_key {
	__u64 client;
	__u32 id;
	__u32 pad;
};

struct lb_aff_val {
	__u32 addr;     /* backend */
	__u16 port;
	__u16 slot;     /* its slot; checked against klb_backends on use */
	__u64 last_ns;  /* bpf_ktime_get_ns() of the last use */
};

/*
 * klb_ct (LRU): TC connection tracking. Two entries per flow:
 *   KLB_CT_FWD: client + frontend -> backend (ingress, packets 2..n)
 *   KLB_CT_REV: client + backend  -> frontend (egress, reverse NAT)
 */
#define KLB_CT_FWD 0
#define KLB_CT_REV 1

struct lb_ct_key {
	__u32 client_addr;
	__u32 addr;         /* frontend (FWD) or backend (REV) */
	__u16 client_port;
	__u16 port;
	__u8 proto;
	__u8 dir;           /* KLB_CT_* */
	__u16 pad;
};

struct lb_ct_val {
	__u32 addr;         /* backend (FWD) or frontend (REV) */
	__u16 port;
	__u16 pad;
	__u64 last_ns;
};

/* The Rust mirror (agent/ebpf/src/layout.rs) relies on these sizes. */
_Static_assert(sizeof(struct lb_svc_key) == 8, "lb_svc_key");
_Static_assert(sizeof(struct lb_svc_val) == 12, "lb_svc_val");
_Static_assert(sizeof(struct lb_be_key) == 8, "lb_be_key");
_Static_assert(sizeof(struct lb_be_val) == 8, "lb_be_val");
_Static_assert(sizeof(struct lb_revnat_key) == 16, "lb_revnat_key");
_Static_assert(sizeof(struct lb_revnat_val) == 8, "lb_revnat_val");
_Static_assert(sizeof(struct lb_aff_key) == 16, "lb_aff_key");
_Static_assert(sizeof(struct lb_aff_val) == 16, "lb_aff_val");
_Static_assert(sizeof(struct lb_ct_key) == 16, "lb_ct_key");
_Static_assert(sizeof(struct lb_ct_val) == 16, "lb_ct_val");

#endif
