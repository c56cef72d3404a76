// SPDX-License-Identifier: Apache-2.0
/*
 * NodePort and external-IP load balancing on a node interface (TC/tcx):
 * ingress DNATs a packet for a frontend to a backend and records the flow in
 * klb_ct; egress reverse-NATs the backend's replies back to the frontend.
 * With externalTrafficPolicy: Local the client's address is kept (the
 * backends are on this node, their replies route back through it). With
 * Cluster policy the first packet is marked KLB_MASQ_MARK and the host's
 * nftables (table keelson_ebpf, installed by the proxy) masquerades it, so
 * a backend on another node replies to this node too.
 */
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb.h"
#include "maps.h"

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))

struct flow {
	__u32 saddr, daddr;
	__u16 sport, dport;
	__u32 l4_off;
	__u8 proto;
};

static __always_inline int parse(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u16 *ports;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl < 5)
		return -1;
	if (ip->frag_off & bpf_htons(0x3fff)) /* fragments: not balanced */
		return -1;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	f->l4_off = ETH_HLEN + ip->ihl * 4;
	if (f->l4_off > 60 + ETH_HLEN)
		return -1;
	ports = data + f->l4_off;
	if ((void *)(ports + 2) > data_end)
		return -1;
	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->sport = ports[0];
	f->dport = ports[1];
	f->proto = ip->protocol;
	return 0;
}

/* Rewrites the source (dst == 0) or destination address and port. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct flow *f, int dst,
				   __u32 new_addr, __u16 new_port)
{
	__u32 old_addr = dst ? f->daddr : f->saddr;
	__u16 old_port = dst ? f->dport : f->sport;
	__u32 csum_off = f->l4_off + (f->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
							       : offsetof(struct udphdr, check));
	__u64 mangled = f->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
				mangled | BPF_F_PSEUDO_HDR | sizeof(new_addr)))
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | sizeof(new_port)))
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)))
		return -1;
	if (bpf_skb_store_bytes(skb, dst ? IP_DST_OFF : IP_SRC_OFF, &new_addr, sizeof(new_addr), 0))
		return -1;
	if (bpf_skb_store_bytes(skb, f->l4_off + (dst ? 2 : 0), &new_port, sizeof(new_port), 0))
		return -1;
	return 0;
}

static __always_inline struct lb_svc_val *frontend(const struct flow *f)
{
	struct lb_svc_key key = { .addr = f->daddr, .port = f->dport, .proto = f->proto, .pad = 0 };
	struct lb_svc_val *svc = bpf_map_lookup_elem(&klb_services, &key);

	if (svc && (svc->flags & KLB_F_EXTERNAL))
		return svc;
	key.addr = 0;
	svc = bpf_map_lookup_elem(&klb_services, &key);
	if (svc && (svc->flags & KLB_F_NODEPORT))
		return svc;
	return NULL;
}

SEC("classifier")
int klb_tc_ingress(struct __sk_buff *skb)
{
	struct flow f = {};
	struct lb_be_val be;
	__u64 now;

	if (parse(skb, &f) < 0)
		return TC_ACT_OK;

	struct lb_ct_key fk = {
		.client_addr = f.saddr, .addr = f.daddr, .client_port = f.sport,
		.port = f.dport, .proto = f.proto, .dir = KLB_CT_FWD, .pad = 0,
	};
	struct lb_ct_val *cv = bpf_map_lookup_elem(&klb_ct, &fk);

	now = bpf_ktime_get_ns();
	if (cv) {
		be.addr = cv->addr;
		be.port = cv->port;
		cv->last_ns = now;
	} else {
		struct lb_svc_val *svc = frontend(&f);

		if (!svc)
			return TC_ACT_OK;
		/* No endpoints: let the packet reach the host, where nothing
		 * listens on the frontend: TCP RST / ICMP port unreachable. */
		if (klb_pick(svc, (__u64)f.saddr, &be) < 0)
			return TC_ACT_OK;
		struct lb_ct_val fv = { .addr = be.addr, .port = be.port, .pad = 0, .last_ns = now };
		struct lb_ct_key rk = {
			.client_addr = f.saddr, .addr = be.addr, .client_port = f.sport,
			.port = be.port, .proto = f.proto, .dir = KLB_CT_REV, .pad = 0,
		};
		struct lb_ct_val rv = { .addr = f.daddr, .port = f.dport, .pad = 0, .last_ns = now };
		if (bpf_map_update_elem(&klb_ct, &rk, &rv, BPF_ANY) ||
		    bpf_map_update_elem(&klb_ct, &fk, &fv, BPF_ANY))
			return TC_ACT_SHOT;
		/* Cluster policy: the backend may be on another node, whose
		 * replies would not come back here. Ask the host to masquerade
		 * (conntrack then keeps the SNAT for the rest of the flow). */
		if (!(svc->flags & KLB_F_EXT_LOCAL))
			skb->mark |= KLB_MASQ_MARK;
	}
	if (rewrite(skb, &f, 1, be.addr, be.port) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

SEC("classifier")
int klb_tc_egress(struct __sk_buff *skb)
{
	struct flow f = {};

	if (parse(skb, &f) < 0)
		return TC_ACT_OK;

	struct lb_ct_key rk = {
		.client_addr = f.daddr, .addr = f.saddr, .client_port = f.dport,
		.port = f.sport, .proto = f.proto, .dir = KLB_CT_REV, .pad = 0,
	};
	struct lb_ct_val *rv = bpf_map_lookup_elem(&klb_ct, &rk);

	if (!rv)
		return TC_ACT_OK;
	rv->last_ns = bpf_ktime_get_ns();
	if (rewrite(skb, &f, 0, rv->addr, rv->port) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Apache-2.0";
