package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/pflag"

	"github.com/lazyroot/lazyroot/fetch"
	"github.com/lazyroot/lazyroot/layer"
)

// registryFlags are the options of every command that talks to a registry.
type registryFlags struct {
	platform       string
	insecure       []string
	username       string
	password       string
	auth           string
	resolveTimeout time.Duration
	hostsDir       string
	maxConns       int
}

func (r *registryFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&r.platform, "platform", "", "platform to pick from a multi-arch image, os/arch[/variant] (default: this host's)")
	fs.StringSliceVar(&r.insecure, "insecure-registry", nil, "registry HOST[:PORT] that may be reached over plain HTTP (repeatable; loopback always may)")
	fs.StringVar(&r.username, "username", "", "registry user name (default: from ~/.docker/config.json or credential helpers)")
	fs.StringVar(&r.password, "password", "", "registry password, with --username")
	fs.StringVar(&r.auth, "auth", "", "registry credentials as base64 of USER:PASSWORD")
	fs.DurationVar(&r.resolveTimeout, "resolve-timeout", 2*time.Minute, "give up resolving the image reference after this long")
	fs.StringVar(&r.hostsDir, "hosts-dir", fetch.DefaultHostsDir, "registry mirrors and CAs, containerd's layout: DIR/HOST/hosts.toml (\"\" for none)")
	fs.IntVar(&r.maxConns, "max-conns-per-host", 8, "at most this many blob requests in flight to one registry or mirror host")
}

// authEnv carries credentials from "mount" to its background server, so
// they never appear on a command line (which every local user can read).
const authEnv = "LAZYROOT_REGISTRY_AUTH"

// credentialFlags are the flags whose values are secrets.
var credentialFlags = []string{"--username", "--password", "--auth"}

// takeCredentials moves the credentials given by flags out of args and into
// the value for authEnv ("" if none were given).
func (r *registryFlags) takeCredentials(args []string) (rest []string, env string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		secret := false
		for _, f := range credentialFlags {
			if a == f {
				secret = true
				i++ // and its value
				break
			}
			if strings.HasPrefix(a, f+"=") {
				secret = true
				break
			}
		}
		if !secret {
			rest = append(rest, a)
		}
	}
	switch {
	case r.auth != "":
		env = r.auth
	case r.username != "":
		env = base64.StdEncoding.EncodeToString([]byte(r.username + ":" + r.password))
	}
	return rest, env
}

// options turns the flags into layer.Resolve options.
func (r *registryFlags) options() ([]layer.Option, error) {
	var opts []layer.Option
	if v, ok := os.LookupEnv(authEnv); ok && r.auth == "" && r.username == "" {
		r.auth = v
		os.Unsetenv(authEnv)
	}
	if r.platform != "" {
		p, err := v1.ParsePlatform(r.platform)
		if err != nil || p.OS == "" || p.Architecture == "" {
			return nil, fmt.Errorf("%w: --platform %q: want os/arch[/variant]", errUsage, r.platform)
		}
		opts = append(opts, layer.WithPlatform(*p))
	}
	for _, h := range r.insecure {
		if h == "" || strings.ContainsAny(h, "/ ") {
			return nil, fmt.Errorf("%w: --insecure-registry %q: want HOST[:PORT]", errUsage, h)
		}
	}
	opts = append(opts, layer.WithInsecureRegistries(r.insecure...))
	switch {
	case r.auth != "" && (r.username != "" || r.password != ""):
		return nil, fmt.Errorf("%w: use --auth or --username/--password, not both", errUsage)
	case r.auth != "":
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(r.auth))
		user, pass, ok := strings.Cut(string(raw), ":")
		if err != nil || !ok || user == "" {
			return nil, fmt.Errorf("%w: --auth: not base64 of USER:PASSWORD", errUsage)
		}
		opts = append(opts, layer.WithAuth(&authn.Basic{Username: user, Password: pass}))
	case r.username != "":
		opts = append(opts, layer.WithAuth(&authn.Basic{Username: r.username, Password: r.password}))
	case r.password != "":
		return nil, fmt.Errorf("%w: --password needs --username", errUsage)
	}
	if r.maxConns < 1 {
		return nil, fmt.Errorf("%w: --max-conns-per-host %d: want 1 or more", errUsage, r.maxConns)
	}
	opts = append(opts, layer.WithHostsDir(r.hostsDir),
		layer.WithFetchOptions(fetch.WithUserAgent("lazyroot"), fetch.WithMaxConnsPerHost(r.maxConns)))
	return opts, nil
}
