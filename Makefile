# weft — build, test and run the lab. Targets that touch the network need root.
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin
SHELL     := /bin/bash
GO        ?= go
BIN       := bin
DEB_PKGS  := iproute2 iptables nftables iputils-ping iperf3 tcpdump wireguard-tools docker-compose
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
LAB_ARGS  ?=
# Pure and store tiers run with the race detector (the backends against the
# in-memory kernel of netkerneltest); host and cluster tiers need root: the
# backends' tests against the real kernel carry the build tag netns.
PURE_PKGS := ./lease/... ./mesh/... ./keys/... ./cmd/... ./backends/...

.PHONY: all build test test-pure test-root vmtest lab lint bench profile soak fuzz deps clean install-cni

all: build

# deps installs the Debian tools the tests and the lab use, when missing.
# docker.io's package scripts would start the machine's own docker service:
# a policy-rc.d that says no keeps them from it (the lab starts its own
# dockerds, one per lab host).
deps:
	@missing=""; \
	for c in ip:iproute2 iptables:iptables nft:nftables ping:iputils-ping iperf3:iperf3 tcpdump:tcpdump wg:wireguard-tools docker-compose:docker-compose /usr/sbin/dockerd:docker.io qemu-system-x86_64:qemu-system-x86 /usr/sbin/depmod:kmod /usr/lib/cni/bridge:containernetworking-plugins podman:podman; do \
		command -v $${c%%:*} >/dev/null 2>&1 || missing="$$missing $${c#*:}"; \
	done; \
	dpkg -s busybox-static >/dev/null 2>&1 || missing="$$missing busybox-static"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		made_policy=""; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; rc=$$?; \
		if [ -n "$$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
		exit $$rc; \
	fi

# weftd and weftctl are static (no cgo), as deploy/compose's image builds
# them: nothing in them needs the C library, and the dynamic build mapped
# libc and the loader into every weftd, about 1.5 MB of its RSS.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/weftd ./cmd/weftd
	CGO_ENABLED=0 $(GO) build -o $(BIN)/weftctl ./cmd/weftctl
	CGO_ENABLED=0 $(GO) build -o $(BIN)/weft ./cmd/weft-cni
	$(GO) build -o $(BIN)/weftlab ./lab/cmd/weftlab
	$(GO) build -o $(BIN)/weftbench ./lab/cmd/weftbench

test: deps test-pure test-root vmtest

test-pure:
	$(GO) test -race -count=1 $(PURE_PKGS)

test-root:
	$(GO) test -count=1 -timeout 15m -tags netns -run InNetns ./backends/... ./cmd/internal/firewall/... ./cmd/weftd/ ./cmd/weft-cni/
	$(GO) test -count=1 -timeout 25m ./deploy/... ./lab/...

# vmtest: the VM tier. Debian's stock kernel (fetched with apt into
# /var/cache/weft-vm, not installed) boots under qemu with this machine's
# files read-only, and runs these cluster tests on its own WireGuard module
# and its nf_tables: each -run is one invocation of the lab's test binary.
# host-gw and udp use neither kernel WireGuard, ipip nor the tunnel filter:
# the lab tier covers them on this kernel.
# VM_ACCEL=kvm asks for KVM (nested KVM aborts or hangs on some machines).
VM_ACCEL ?= tcg
VM_TESTS := -run '^(TestWireGuardCluster|TestWireGuardMixedMesh|TestLeasesStatusMetrics)$$' \
	-run '^(TestFaultKilledMidApply|TestRestartGapDistribution)$$/^wireguard$$' \
	-run '^(TestVXLANCluster|TestIPMasqAndCleanup|TestIPIPCluster|TestFlannelIPIPHost)$$' \
	-run '^(TestDualStackCluster|TestIPv6OnlyCluster)$$/^wireguard$$' -run '^TestDualStackWireGuardOneDevice$$' \
	-run '^(TestWireGuardBehindNAT|TestWireGuardDirectRouting|TestNATToNATRelay)$$'
vmtest: deps
	$(GO) run ./lab/cmd/weftvm -accel $(VM_ACCEL) $(VM_TESTS)

# lab: several hosts in network namespaces with etcd and weftd; Ctrl-C ends it.
# make lab LAB_ARGS="-backend host-gw -hosts 4 -duration 30s"
lab: deps build
	$(BIN)/weftlab $(LAB_ARGS)

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags netns ./backends/... ./cmd/internal/firewall/... ./cmd/weftd/ ./cmd/weft-cni/
	$(GO) run $(STATICCHECK) ./...

# bench: data paths next to their bare limits, the control plane, the
# scale run and 200 hosts joining, in one lab run (root), written to
# BENCHMARKS.md and BENCHMARKS.svg. The reference wireguard-go is the module
# version weft embeds. BENCH_ARGS picks parts, e.g. BENCH_ARGS='-backends ""'.
BENCH_ARGS ?=
bench: deps build $(BIN)/wireguard $(BIN)/flanneld
	$(BIN)/weftbench -wireguard-go $(BIN)/wireguard -flanneld $(BIN)/flanneld -out BENCHMARKS.md -chart BENCHMARKS.svg $(BENCH_ARGS)

$(BIN)/wireguard:
	GOBIN=$(CURDIR)/$(BIN) $(GO) install golang.zx2c4.com/wireguard@$$($(GO) list -m -f '{{.Version}}' golang.zx2c4.com/wireguard)

# flanneld, for the scale run's side-by-side rows: built from the source of
# the release weft is compatible with (../shared/flannel holds what it
# wrote), from the Go module proxy. Its tencentcloud vpc module at the
# version go.mod names does not build; the replace takes the last that does.
FLANNEL_VERSION := v0.28.9
$(BIN)/flanneld:
	set -e; src=$$(mktemp -d); trap 'chmod -R u+w '"$$src"'; rm -rf '"$$src" EXIT; \
	dir=$$($(GO) mod download -json github.com/flannel-io/flannel@$(FLANNEL_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	cp -r "$$dir"/. "$$src"; chmod -R u+w "$$src"; cd "$$src"; \
	$(GO) mod edit -replace github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc=github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc@v1.3.128; \
	GOFLAGS=-mod=mod $(GO) build -o $(CURDIR)/$(BIN)/flanneld .

# profile: CPU and heap profiles of weftd programming 10,000 simulated
# WireGuard peers (the worst figure of the scale run), then the top of each.
PROFILE_ARGS ?= -scale 10000 -scale-backends wireguard
profile: deps build $(BIN)/wireguard
	mkdir -p $(BIN)/profile
	$(BIN)/weftbench -wireguard-go $(BIN)/wireguard -backends "" -control "" -join 0 -flood 0 $(PROFILE_ARGS) \
		-profile $(BIN)/profile -out $(BIN)/profile/report.md -chart $(BIN)/profile/chart.svg
	for f in $(BIN)/profile/heap-*.pb.gz; do $(GO) tool pprof -top -nodecount 25 -sample_index=inuse_space $(BIN)/weftd $$f; done
	for f in $(BIN)/profile/heap-*.pb.gz; do $(GO) tool pprof -top -nodecount 25 -sample_index=alloc_space $(BIN)/weftd $$f; done
	for f in $(BIN)/profile/cpu-*.pb.gz; do $(GO) tool pprof -top -nodecount 25 $(BIN)/weftd $$f; done

# fuzz: every fuzzer of remote input for FUZZTIME each. A crasher lands in
# the package's testdata/fuzz and is then a regression test of `make test`.
FUZZTIME ?= 60s
FUZZERS := ./lease/:FuzzDecodeLease ./lease/:FuzzParseConfig ./backends/udp/:FuzzAccept ./keys/:FuzzParseKey ./backends/wireguard/:FuzzWireGuardConfig
fuzz:
	@for f in $(FUZZERS); do \
		echo "fuzzing $${f#*:} for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${f#*:}$$" -fuzztime $(FUZZTIME) $${f%%:*} || exit 1; \
	done

# soak: the fault suite's long form (etcd down 60 s, ...), bounded by its
# timeout; its RELIABILITY lines become RELIABILITY.md.
soak: deps fuzz
	set -o pipefail; WEFT_SOAK=1 $(GO) test -count=1 -v -timeout 30m \
		-run 'TestFault|TestEtcdCluster|TestWireGuardCluster|TestUDPCluster|TestVXLANCluster|TestHostGWCluster|TestRestartGapDistribution' ./lab/ | tee $(BIN)/soak.log
	{ echo "# weft reliability"; echo; \
	  echo "Written by \`make soak\` on $$(date -u '+%F %H:%M UTC'): the fault suite's long form in the network-namespace lab."; echo; \
	  grep -o 'RELIABILITY: .*' $(BIN)/soak.log | sed 's/^RELIABILITY: /- /'; } > RELIABILITY.md

# install-cni puts weft's CNI plugin in /opt/cni/bin (never in the
# package-owned /usr/lib/cni) as weft, and as flannel unless a flannel
# plugin that is not weft's is there, and the example conflist in
# /etc/cni/net.d unless one named weft is there.
install-cni: build
	install -D -m 0755 $(BIN)/weft /opt/cni/bin/weft
	@if [ -e /opt/cni/bin/flannel ] && [ "$$(readlink /opt/cni/bin/flannel)" != weft ]; then \
		echo "/opt/cni/bin/flannel is not weft's: left alone (conflists of type flannel run it)"; \
	else ln -sfn weft /opt/cni/bin/flannel; fi
	@if [ -e /etc/cni/net.d/weft.conflist ]; then echo "/etc/cni/net.d/weft.conflist exists: left alone"; \
	else install -D -m 0644 deploy/cni/weft.conflist /etc/cni/net.d/weft.conflist; fi

clean:
	rm -rf $(BIN)
