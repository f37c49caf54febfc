// Package container turns a mounted image root into a place a job can run:
// it mounts /proc, a minimal /dev, /sys, the node's /etc/resolv.conf and
// /etc/hosts and the caller's bind mounts inside the root, resolves the
// image's user names, and starts the job's command chrooted in it.
//
// SetupRoot must run in a private mount namespace (the caller's job), so
// nothing it mounts is seen by the node, and every mount goes away with
// the namespace. Paths inside the root are resolved with openat2's
// RESOLVE_IN_ROOT, so a symlink in an image can never point a mount or a
// write outside the root.
//
// The command is started through a small helper: this program re-executed
// with HelperArg, which chroots, changes credentials and directory, and
// execs the command. The process serving the root's FUSE lower therefore
// never execs a file of its own mount (which could deadlock it); the
// helper's binary is on the node's disk. Programs that call Start must call
// RunHelper first thing in main.
//
// Nothing here keeps global state; every function is safe to call from any
// goroutine.
package container
