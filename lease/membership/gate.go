package membership

import (
	"context"
	"fmt"
	"sync"

	"github.com/weftnet/weft/lease"
)

// ConfigGate is a lease.Store whose Config returns the network config only
// when the policy lets this host run it: in enforce mode, when a trusted
// CA sealed exactly these bytes with a serial no lower than the highest
// taken; otherwise it returns an error wrapping lease.ErrInvalidConfig, so
// a starting host waits (saying why) and a running one keeps its config.
// In warn mode it says once what is wrong and returns the config.
type ConfigGate struct {
	lease.Store
	Members Store
	Policy  *Policy

	mu     sync.Mutex
	warned string
}

// Config implements lease.Store.
func (g *ConfigGate) Config(ctx context.Context) ([]byte, error) {
	raw, err := g.Store.Config(ctx)
	if err != nil || g.Policy.Mode() == Off {
		return raw, err
	}
	seal, _, err := g.Members.Membership(ctx, ConfigSealName) // nil when there is none
	if err != nil {
		return nil, err
	}
	why := g.Policy.CheckConfig(raw, seal)
	if why == nil {
		g.say("")
		return raw, nil
	}
	g.Policy.refused.Add(1)
	if g.Policy.Mode() == Warn {
		g.say(why.Error())
		return raw, nil
	}
	g.say(why.Error())
	return nil, fmt.Errorf("%w: -membership enforce: %v", lease.ErrInvalidConfig, why)
}

// say logs why the stored config is not what the policy wants, once each
// time it changes ("": it is).
func (g *ConfigGate) say(why string) {
	g.mu.Lock()
	said := g.warned == why
	g.warned = why
	g.mu.Unlock()
	switch {
	case said || why == "":
	case g.Policy.Mode() == Warn:
		g.Policy.log.Warn("the network config is not sealed by the CA; running it anyway (-membership warn)", "why", why)
	default:
		g.Policy.log.Warn("refusing the network config (-membership enforce); keeping the one running", "why", why)
	}
}
