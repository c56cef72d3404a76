// SPDX-License-Identifier: Apache-2.0
/*
 * Socket-level Service load balancing: the destination of connect() and
 * sendmsg() is rewritten from a Service frontend (VIP:port) to a backend
 * before any packet exists; recvmsg() and getpeername() translate back so
 * the application only ever sees the VIP. Attached to a cgroup2 directory.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include "lb.h"
#include "maps.h"

#define SYS_PROCEED 1
#define SYS_REJECT 0

static __always_inline int klb_sock_forward(struct bpf_sock_addr *ctx)
{
	struct lb_svc_key key = {
		.addr = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
		.proto = (__u8)ctx->protocol,
		.pad = 0,
	};
	struct lb_svc_val *svc;
	struct lb_be_val be;

	if (key.addr == 0)
		return SYS_PROCEED;
	svc = bpf_map_lookup_elem(&klb_services, &key);
	if (!svc || (svc->flags & KLB_F_NODEPORT))
		return SYS_PROCEED;
	if (klb_pick(svc, bpf_get_netns_cookie(ctx), &be) < 0) {
		/* A Service without endpoints rejects, never blackholes. */
		bpf_set_retval(-ECONNREFUSED);
		return SYS_REJECT;
	}

	struct lb_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = be.addr,
		.port = be.port,
		.pad = 0,
	};
	struct lb_revnat_val rv = { .addr = key.addr, .port = key.port, .pad = 0 };
	bpf_map_update_elem(&klb_revnat, &rk, &rv, BPF_ANY);

	ctx->user_ip4 = be.addr;
	ctx->user_port = (__u32)be.port;
	return SYS_PROCEED;
}

static __always_inline void klb_sock_reverse(struct bpf_sock_addr *ctx)
{
	struct lb_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
		.pad = 0,
	};
	struct lb_revnat_val *rv = bpf_map_lookup_elem(&klb_revnat, &rk);

	if (rv) {
		ctx->user_ip4 = rv->addr;
		ctx->user_port = (__u32)rv->port;
	}
}

SEC("cgroup/connect4")
int klb_connect4(struct bpf_sock_addr *ctx)
{
	return klb_sock_forward(ctx);
}

SEC("cgroup/sendmsg4")
int klb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return klb_sock_forward(ctx);
}

SEC("cgroup/recvmsg4")
int klb_recvmsg4(struct bpf_sock_addr *ctx)
{
	klb_sock_reverse(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int klb_getpeer4(struct bpf_sock_addr *ctx)
{
	klb_sock_reverse(ctx);
	return SYS_PROCEED;
}

char LICENSE[] SEC("license") = "Apache-2.0";
