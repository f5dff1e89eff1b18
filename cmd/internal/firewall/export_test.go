package firewall

// RemoveFlannelChains lets the external tests run removeFlannelChains on
// a fake iptables.
var RemoveFlannelChains = removeFlannelChains
