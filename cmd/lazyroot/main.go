// Command lazyroot mounts container images lazily: the tree is there in
// well under a second and file bytes are fetched from the registry when
// they are read.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/lazyroot/lazyroot/container"
)

// command is one subcommand.
type command struct {
	name    string
	args    string
	summary string
	run     func(ctx context.Context, stdout io.Writer, args []string) error
}

func commands() []command {
	return []command{
		{"mount", "IMAGE DIR", "mount IMAGE at DIR, fetching file bytes on demand", runMount},
		{"umount", "DIR", "unmount a lazyroot mount and stop its server", runUmount},
		{"run", "IMAGE [-- CMD ARGS...]", "run a command in IMAGE, in a private writable mount, and clean up after it", runRun},
		{"commit", "DIR --tag REF", "push a writable mount's changes as a new image: its image plus one layer", runCommit},
		{"inspect", "IMAGE", "show an image's layers and how each would be read", runInspect},
		{"status", "[DIR]", "show lazyroot mounts and the bytes they fetched", runStatus},
		{"cache", "stats|prune", "show or free the node's chunk cache", runCache},
		{"index", "push IMAGE", "build an image's layer indexes and push them to its registry for other nodes", runIndex},
	}
}

// errUsage marks an error caused by how the command was called.
var errUsage = errors.New("usage")

func main() {
	container.RunHelper()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Stdout, os.Args[1:])
	stop()
	var code exitCode
	if errors.As(err, &code) {
		os.Exit(int(code))
	}
	if err != nil && !errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "lazyroot: %v\n", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, stdout io.Writer, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return fmt.Errorf("%w: no command given", errUsage)
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, stdout, args[1:])
		}
	}
	return fmt.Errorf("%w: unknown command %q (see 'lazyroot --help')", errUsage, args[0])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "lazyroot mounts container images lazily, without pulling them.")
	fmt.Fprintln(w, "\nUsage: lazyroot COMMAND [OPTIONS] ARGS")
	fmt.Fprintln(w, "\nCommands:")
	width := 0
	for _, c := range commands() {
		width = max(width, len(c.args))
	}
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %-*s  %s\n", c.name, width, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'lazyroot COMMAND --help' for a command's options.")
}

// newFlagSet returns a GNU-style flag set whose --help names the command.
func newFlagSet(stdout io.Writer, name string) *pflag.FlagSet {
	var c command
	for _, cc := range commands() {
		if cc.name == name {
			c = cc
		}
	}
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: lazyroot %s [OPTIONS] %s\n\n%s.\n\nOptions:\n", c.name, c.args, upperFirst(c.summary))
		fs.PrintDefaults()
	}
	return fs
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}

// parseArgs parses flags and checks the number of positional arguments.
func parseArgs(fs *pflag.FlagSet, args []string, min, max int) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
	}
	if n := fs.NArg(); n < min || n > max {
		return fmt.Errorf("%w: %s takes %s, got %d argument(s) (see 'lazyroot %s --help')", errUsage, fs.Name(), argWord(min, max), n, fs.Name())
	}
	return nil
}

func argWord(min, max int) string {
	if min == max {
		return fmt.Sprintf("%d argument(s)", min)
	}
	return fmt.Sprintf("%d to %d arguments", min, max)
}
