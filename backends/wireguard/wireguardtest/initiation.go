package wireguardtest

import (
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/weftnet/weft/keys"
)

// InitiationSource is a real wireguard-go device holding a private key,
// peered with one responder, whose handshake initiations are captured as
// they leave it over an in-process bind: what an eavesdropper on the
// underlay would record of that host's initiations, for tests that
// replay or tamper with them.
type InitiationSource struct {
	dev       *device.Device
	bind      conn.Bind
	responder keys.Key
	receive   conn.ReceiveFunc
}

// NewInitiationSource starts wireguard-go with private, peered with the
// host whose public key is responder. Close stops it.
func NewInitiationSource(private, responder keys.Key) (*InitiationSource, error) {
	binds := bindtest.NewChannelBinds()
	dev := device.NewDevice(tuntest.NewChannelTUN().TUN(), binds[0], device.NewLogger(device.LogLevelSilent, ""))
	if err := dev.IpcSet("private_key=" + hex.EncodeToString(private[:]) + "\n"); err != nil {
		dev.Close()
		return nil, err
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, err
	}
	fns, _, err := binds[1].Open(0)
	if err != nil {
		dev.Close()
		return nil, err
	}
	return &InitiationSource{dev: dev, bind: binds[1], responder: responder, receive: fns[0]}, nil
}

// Close stops the device.
func (s *InitiationSource) Close() {
	s.dev.Close()
	s.bind.Close()
}

// initiationSize is a handshake initiation's length.
const initiationSize = device.MessageInitiationSize

// Next makes the device start a fresh handshake (the peer configured
// anew, as after its removal) and returns the initiation it sends: each
// carries a newer timestamp than the one before.
func (s *InitiationSource) Next() ([]byte, error) {
	time.Sleep(20 * time.Millisecond) // TAI64N is whitened to about 16 ms
	peer := hex.EncodeToString(s.responder[:])
	if err := s.dev.IpcSet(fmt.Sprintf("public_key=%s\nremove=true\n", peer)); err != nil {
		return nil, err
	}
	if err := s.dev.IpcSet(fmt.Sprintf("public_key=%s\nendpoint=127.0.0.1:1\nallowed_ip=10.77.0.0/24\n", peer)); err != nil {
		return nil, err
	}
	s.dev.LookupPeer(device.NoisePublicKey(s.responder)).SendKeepalive() // no session: starts a handshake
	got := make(chan []byte, 1)
	go func() {
		bufs, sizes, eps := [][]byte{make([]byte, 2048)}, []int{0}, []conn.Endpoint{nil}
		for {
			n, err := s.receive(bufs, sizes, eps)
			if err != nil {
				got <- nil
				return
			}
			if n == 1 && sizes[0] == initiationSize && bufs[0][0] == device.MessageInitiationType {
				got <- append([]byte(nil), bufs[0][:sizes[0]]...)
				return
			}
		}
	}()
	select {
	case msg := <-got:
		if msg == nil {
			return nil, errors.New("the bind closed before an initiation came")
		}
		return msg, nil
	case <-time.After(5 * time.Second):
		return nil, errors.New("wireguard-go sent no handshake initiation within 5 s")
	}
}
