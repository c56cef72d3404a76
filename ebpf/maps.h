/* SPDX-License-Identifier: Apache-2.0 */
/* The maps, pinned by name under the loader's pin directory (see README.md). */
#ifndef KEELSON_MAPS_H
#define KEELSON_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLB_MAX_SERVICES);
	__type(key, struct lb_svc_key);
	__type(value, struct lb_svc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} klb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KLB_MAX_BACKENDS);
	__type(key, struct lb_be_key);
	__type(value, struct lb_be_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} klb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KLB_MAX_REVNAT);
	__type(key, struct lb_revnat_key);
	__type(value, struct lb_revnat_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} klb_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KLB_MAX_AFFINITY);
	__type(key, struct lb_aff_key);
	__type(value, struct lb_aff_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} klb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KLB_MAX_CT);
	__type(key, struct lb_ct_key);
	__type(value, struct lb_ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} klb_ct SEC(".maps");

/*
 * Chooses a backend of `svc` for `client`: the one remembered in
 * klb_affinity while it is fresh and still a backend of the service, else a
 * random slot. Returns 0 and fills *out, or -1 when no slot can be read.
 */
static __always_inline int klb_pick(const struct lb_svc_val *svc, __u64 client,
				    struct lb_be_val *out)
{
	struct lb_be_key bk = { .id = svc->id, .slot = 0 };
	struct lb_aff_key ak = { .client = client, .id = svc->id, .pad = 0 };
	struct lb_be_val *be;
	__u64 now = 0;
	__u16 count = svc->count;

	if (count == 0)
		return -1;
	if (svc->flags & KLB_F_AFFINITY) {
		struct lb_aff_val *av;

		now = bpf_ktime_get_ns();
		av = bpf_map_lookup_elem(&klb_affinity, &ak);
		if (av && now - av->last_ns <= (__u64)svc->affinity_timeout * 1000000000ULL &&
		    av->slot < count) {
			bk.slot = av->slot;
			be = bpf_map_lookup_elem(&klb_backends, &bk);
			if (be && be->addr == av->addr && be->port == av->port) {
				*out = *be;
				av->last_ns = now;
				return 0;
			}
		}
	}
	bk.slot = bpf_get_prandom_u32() % count;
	be = bpf_map_lookup_elem(&klb_backends, &bk);
	if (!be) {
		/* The slot is being rewritten by a shrinking update: slot 0
		 * is written first and removed last. */
		bk.slot = 0;
		be = bpf_map_lookup_elem(&klb_backends, &bk);
		if (!be)
			return -1;
	}
	*out = *be;
	if (svc->flags & KLB_F_AFFINITY) {
		struct lb_aff_val nv = {
			.addr = be->addr, .port = be->port, .slot = (__u16)bk.slot, .last_ns = now,
		};
		bpf_map_update_elem(&klb_affinity, &ak, &nv, BPF_ANY);
	}
	return 0;
}

#endif
