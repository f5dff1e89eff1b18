package firewall

import (
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"strconv"
)

// MSS clamping on weft's WireGuard devices. After a live switch to
// wireguard the device keeps the larger MTU containers started with under
// the previous backend (wireguard.Backend.CarryMTU), so their packets pass
// whole, and an encrypted one too large for the underlay leaves in
// fragments. TCP need not pay for that: a SYN leaving by weft-wg gets at
// most the MSS of WireGuard's own MTU, so both ends of a connection send
// segments that fit unfragmented (each end clamps the SYN it sends, so
// both directions are covered). Only while a device carries a larger MTU.
const (
	MSSChain      = "WEFT-MSS"
	mssComment    = "weft mss"
	nftMSSChain   = "mss"
	tcpOptMaxSeg  = 2 // TCP option kind of the MSS
	tcpFlagsByte  = 13
	tcpFlagSYN    = 0x02
	tcpFlagSYNRST = 0x06
)

// mssFor is the largest MSS that fits mtu: less the IP and TCP headers.
func mssFor(ipv6 bool, mtu int) int {
	if ipv6 {
		return mtu - 60
	}
	return mtu - 40
}

// MSSChainFor is the iptables chain that clamps the MSS of TCP SYNs
// leaving by weft's WireGuard devices to what mtu (WireGuard's own MTU)
// holds, in mangle POSTROUTING (forwarded and the host's own alike).
func MSSChainFor(ipv6 bool, mtu int) Chain {
	match := []string{"-o", EncryptedDevices, "-p", "tcp", "-m", "tcp", "--tcp-flags", "SYN,RST", "SYN"}
	return Chain{Table: "mangle", Name: MSSChain, From: "POSTROUTING", Jump: rule(mssComment, nil, "-j", MSSChain),
		Rules: [][]string{rule(mssComment, match, "-j", "TCPMSS", "--set-mss", strconv.Itoa(mssFor(ipv6, mtu)))}}
}

// NFTMSSChainFor is MSSChainFor for weft's nftables table, as nft's
// `oifname "weft-wg*" tcp flags syn / syn,rst tcp option maxseg size
// > N tcp option maxseg size set N`.
func NFTMSSChainFor(ipv6 bool, mtu int) NFTChain {
	mss := uint16(mssFor(ipv6, mtu))
	text := `oifname "weft-wg*" tcp flags syn / syn,rst tcp option maxseg size > ` + strconv.Itoa(int(mss)) +
		` tcp option maxseg size set ` + strconv.Itoa(int(mss))
	maxSeg := func(reg uint32, write bool) *expr.Exthdr {
		e := &expr.Exthdr{Op: expr.ExthdrOpTcpopt, Type: tcpOptMaxSeg, Offset: 2, Len: 2}
		if write {
			e.SourceRegister = reg
		} else {
			e.DestRegister = reg
		}
		return e
	}
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		// nft compiles a trailing * to a compare of the prefix alone.
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte("weft-wg")},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{6}}, // TCP
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: tcpFlagsByte, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpFlagSYNRST}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{tcpFlagSYN}},
		maxSeg(1, false),
		// Compared as big-endian bytes, which orders as the number.
		&expr.Cmp{Op: expr.CmpOpGt, Register: 1, Data: binaryutil.BigEndian.PutUint16(mss)},
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(mss)},
		maxSeg(1, true),
	}
	return NFTChain{Name: nftMSSChain, Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityMangle, Rules: []NFTRule{{Text: text, Exprs: exprs}}}
}
