package netkernel

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// attr is one netlink attribute as the kernel writes it (native endian
// on these machines, little), padded to four bytes.
func attr(typ uint16, v []byte) []byte {
	b := make([]byte, 4, 4+len(v)+3)
	binary.LittleEndian.PutUint16(b[0:2], uint16(4+len(v)))
	binary.LittleEndian.PutUint16(b[2:4], typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// TestDecodeNeighbour: a neighbour message is read in place, and a
// message cut short or with a length running past its end is read as far
// as it holds, never past it.
func TestDecodeNeighbour(t *testing.T) {
	hdr := make([]byte, 12)
	hdr[0] = unix.AF_BRIDGE
	binary.LittleEndian.PutUint32(hdr[4:8], 7)
	msg := append(append(append([]byte{}, hdr...), attr(unix.NDA_DST, []byte{192, 168, 77, 2})...), attr(unix.NDA_LLADDR, []byte{2, 0, 0, 0, 0, 2})...)
	n, ok := decodeNeighbour(msg)
	if !ok || n.Link != 7 || n.IP != netip.MustParseAddr("192.168.77.2") || !n.HasMAC || n.MAC != [6]byte{2, 0, 0, 0, 0, 2} {
		t.Errorf("decoded %+v %v", n, ok)
	}
	for cut := range len(msg) {
		decodeNeighbour(msg[:cut]) // must not panic
	}
	bad := append([]byte{}, msg...)
	binary.LittleEndian.PutUint16(bad[12:14], 200) // NDA_DST claims more than there is
	if n, _ := decodeNeighbour(bad); n.IP.IsValid() || n.HasMAC {
		t.Errorf("an attribute past the message's end was read: %+v", n)
	}
}
