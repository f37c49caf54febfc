package bench

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Network is the emulated link: a network namespace holding the registry
// and the delaying proxy, reached from the host over a veth pair whose two
// ends are shaped with tc tbf.
type Network struct {
	NS       string // namespace name
	HostIf   string // host end of the veth pair
	NSIf     string // namespace end
	HostAddr string // address of the host end, e.g. 10.201.0.1
	NSAddr   string // address of the namespace end, e.g. 10.201.0.2
	Prefix   int    // prefix length of both
}

// DefaultNetwork is the topology make bench uses.
func DefaultNetwork() Network {
	return Network{NS: "lzbench", HostIf: "lzb-h", NSIf: "lzb-n", HostAddr: "10.201.0.1", NSAddr: "10.201.0.2", Prefix: 24}
}

func sh(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Up creates the namespace and the veth pair, unshaped. A namespace of the
// same name left by an earlier run is removed first.
func (n Network) Up(ctx context.Context) error {
	n.Down()
	steps := [][]string{
		{"ip", "netns", "add", n.NS},
		{"ip", "link", "add", n.HostIf, "type", "veth", "peer", "name", n.NSIf},
		{"ip", "link", "set", n.NSIf, "netns", n.NS},
		{"ip", "addr", "add", fmt.Sprintf("%s/%d", n.HostAddr, n.Prefix), "dev", n.HostIf},
		{"ip", "link", "set", n.HostIf, "up"},
		{"ip", "netns", "exec", n.NS, "ip", "addr", "add", fmt.Sprintf("%s/%d", n.NSAddr, n.Prefix), "dev", n.NSIf},
		{"ip", "netns", "exec", n.NS, "ip", "link", "set", n.NSIf, "up"},
		{"ip", "netns", "exec", n.NS, "ip", "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := sh(ctx, s...); err != nil {
			n.Down()
			return err
		}
	}
	return nil
}

// TBFArgs returns the tc arguments that shape dev to rateBits per second:
// a burst of 2 ms of traffic (at least 64 KiB, so a GSO packet passes) and
// a queue of 100 ms.
func TBFArgs(dev string, rateBits int64) []string {
	burst := rateBits / 8 / 500
	if burst < 64<<10 {
		burst = 64 << 10
	}
	limit := rateBits / 8 / 10
	if limit < 4*burst {
		limit = 4 * burst
	}
	return []string{"tc", "qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", fmt.Sprintf("%dbit", rateBits), "burst", fmt.Sprint(burst), "limit", fmt.Sprint(limit)}
}

// Shape limits both directions of the link to rateBits per second.
func (n Network) Shape(ctx context.Context, rateBits int64) error {
	if err := sh(ctx, TBFArgs(n.HostIf, rateBits)...); err != nil {
		return err
	}
	return sh(ctx, append([]string{"ip", "netns", "exec", n.NS}, TBFArgs(n.NSIf, rateBits)...)...)
}

// Down removes the namespace (and with it the veth pair). It never fails:
// there may be nothing to remove.
func (n Network) Down() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = exec.CommandContext(ctx, "ip", "netns", "del", n.NS).Run()
	_ = exec.CommandContext(ctx, "ip", "link", "del", n.HostIf).Run()
}

// Command returns cmd run inside the namespace.
func (n Network) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.NS, name}, args...)...)
}
