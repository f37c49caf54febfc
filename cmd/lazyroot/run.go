package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/container"
)

// exitCode is an error that carries the status the process should exit
// with, already reported (or not an error at all: a job's own status).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// exitRunFailed is run's status when lazyroot itself failed before the
// command started, as container runtimes report it.
const exitRunFailed = 125

type runFlags struct {
	mountFlags
	binds      []string
	env        []string
	workdir    string
	user       string
	entrypoint []string
	inner      string
}

// forwarded are the signals run passes on to the job.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}

func runRun(ctx context.Context, stdout io.Writer, args []string) error {
	var f runFlags
	fset := newFlagSet(stdout, "run")
	fset.SetInterspersed(false)
	fset.StringArrayVar(&f.binds, "bind", nil, "bind-mount SRC of the node at DST in the job (SRC:DST[:ro]); repeat the flag")
	fset.StringArrayVarP(&f.env, "env", "e", nil, "set K=V in the job's environment, over the image's; repeat the flag")
	fset.StringVarP(&f.workdir, "workdir", "w", "", "working directory in the job (default: the image's, else /)")
	fset.StringVarP(&f.user, "user", "u", "", "run as USER[:GROUP], names or numbers (default: the image's user, else root)")
	fset.StringArrayVar(&f.entrypoint, "entrypoint", nil, "replace the image's entrypoint with this program (repeat for its leading arguments; \"\" clears it)")
	fset.StringVar(&f.inner, "inner", "", "run directory of the namespaced half of run (internal)")
	_ = fset.MarkHidden("inner")
	f.registerMountFlags(fset)
	// Without a user namespace there is nothing for run to map.
	_ = fset.MarkHidden("uid-map")
	_ = fset.MarkHidden("gid-map")
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: run: %v", errUsage, err)
	}
	image, command, err := splitRunArgs(fset, len(f.layers) > 0)
	if err != nil {
		return err
	}
	if _, err := f.check(image); err != nil {
		return err
	}
	for _, b := range f.binds {
		if _, err := container.ParseBind(b); err != nil {
			return fmt.Errorf("%w: --bind: %v", errUsage, err)
		}
	}
	for _, kv := range f.env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("%w: --env %q: want K=V", errUsage, kv)
		}
	}
	if len(f.uidMap) > 0 || len(f.gidMap) > 0 {
		return fmt.Errorf("%w: --uid-map and --gid-map are for mount: run has no user namespace to map the job's own ids", errUsage)
	}
	if f.inner != "" {
		return runInner(ctx, &f, image, command)
	}
	rest, auth := f.takeCredentials(args)
	return runOuter(f.root, rest, auth)
}

// splitRunArgs takes IMAGE (unless local layers are given) and the
// command from the arguments left after the flags.
func splitRunArgs(fset *pflag.FlagSet, layers bool) (image string, command []string, err error) {
	rest := fset.Args()
	if dash := fset.ArgsLenAtDash(); dash >= 0 {
		// "--" ended the flags: IMAGE, if any, came before it.
		if (layers && dash != 0) || (!layers && dash != 1) {
			return "", nil, fmt.Errorf("%w: run takes IMAGE [-- CMD ARGS...], or --layer FILE... [-- CMD ARGS...] (see 'lazyroot run --help')", errUsage)
		}
		if !layers {
			image = rest[0]
		}
		return image, rest[dash:], nil
	}
	if !layers {
		if len(rest) == 0 {
			return "", nil, fmt.Errorf("%w: run needs an IMAGE (see 'lazyroot run --help')", errUsage)
		}
		image, rest = rest[0], rest[1:]
	}
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	return image, rest, nil
}

// runOuter starts run's namespaced half in new mount and PID namespaces,
// forwards signals to it and exits with its status. Every mount lives in
// that namespace, so whatever way the job ends, even by SIGKILL of this
// process (the half dies with it), nothing stays mounted on the node.
func runOuter(root string, args []string, auth string) error {
	runs := filepath.Join(root, "runs")
	if err := os.MkdirAll(runs, 0o700); err != nil {
		return fmt.Errorf("state root %s: %w", root, err)
	}
	removeStaleRuns(runs)
	var id [8]byte
	rand.Read(id[:])
	name := hex.EncodeToString(id[:])
	// The directory is locked before it gets the name removeStaleRuns
	// looks at, so another run never takes it for a stale one.
	newDir := filepath.Join(runs, ".new-"+name)
	if err := os.Mkdir(newDir, 0o700); err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(newDir, "lock"), os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		os.RemoveAll(newDir)
		return fmt.Errorf("run directory: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		os.RemoveAll(newDir)
		return fmt.Errorf("run directory: %w", err)
	}
	dir := filepath.Join(runs, name)
	if err := os.Rename(newDir, dir); err != nil {
		os.RemoveAll(newDir)
		return fmt.Errorf("run directory: %w", err)
	}
	defer removeRunDir(dir)
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	inner := []string{"run", "--inner", dir, "--root", root}
	// The namespaced half watches this pipe: when this process dies, by
	// any signal, the pipe closes and the half takes the job down.
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer lifeW.Close()
	cmd := exec.Command(self, append(inner, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{lifeR}
	if auth != "" {
		cmd.Env = append(os.Environ(), authEnv+"="+auth)
	}
	// The parent-death signal follows the thread that started the child.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID,
		Pdeathsig:  syscall.SIGKILL,
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)
	err = cmd.Start()
	lifeR.Close()
	if err != nil {
		return fmt.Errorf("start the job's namespaces: %w", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			cmd.Process.Signal(sig)
		case err := <-waited:
			var ee *exec.ExitError
			if cmd.ProcessState.ExitCode() == 0 {
				// lazyroot's log of a run that worked is not kept.
				os.Remove(filepath.Join(root, "logs", "run-"+name+".log"))
			}
			switch {
			case err == nil:
				return nil
			case errors.As(err, &ee):
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok {
					return exitCode(container.ExitCode(unix.WaitStatus(ws)))
				}
				return exitCode(ee.ExitCode())
			default:
				return fmt.Errorf("wait for the job: %w", err)
			}
		}
	}
}

// removeStaleRuns deletes the run directories no live run holds: left by
// a run killed before it could clean up. Their mounts died with their
// namespaces.
func removeStaleRuns(runs string) {
	entries, _ := os.ReadDir(runs)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue // being made
		}
		dir := filepath.Join(runs, e.Name())
		lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|syscall.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			removeRunDir(dir)
		}
		lock.Close()
	}
}

// removeRunDir deletes a run directory unless something is still mounted
// in it on this node, which RemoveAll would reach into.
func removeRunDir(dir string) {
	for _, sub := range []string{"root", "lower"} {
		if isMounted(filepath.Join(dir, sub)) {
			return
		}
	}
	os.RemoveAll(dir)
}

// runInner is run's namespaced half: it is the init of a new PID
// namespace and the only user of a new mount namespace. It mounts the
// image and the job's file systems there, starts the command and returns
// its status; leaving kills whatever the job left running.
func runInner(ctx context.Context, f *runFlags, image string, command []string) error {
	err := runJob(ctx, f, image, command)
	var ec exitCode
	if err != nil && !errors.As(err, &ec) {
		fmt.Fprintf(os.Stderr, "lazyroot: %v\n", err)
		return exitCode(exitRunFailed)
	}
	return err
}

func runJob(ctx context.Context, f *runFlags, image string, command []string) error {
	if os.Getpid() != 1 {
		return errors.New("run --inner is run's own half, started in new namespaces")
	}
	go watchParent(os.NewFile(3, "parent"))
	// Not dumpable: a root job cannot read this process's memory,
	// environment (credentials) or files, nor reach the node's root
	// through /proc/1/root, without CAP_SYS_PTRACE, which it lacks.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("make lazyroot undumpable: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	logger, closeLog, err := runLogger(f)
	if err != nil {
		return err
	}
	defer closeLog()
	mem, err := f.check(image)
	if err != nil {
		return err
	}
	m, err := prepare(ctx, &f.mountFlags, image, mem, logger)
	if err != nil {
		return err
	}
	defer m.close()
	f.suid = true // the mounts are private to the job's namespace
	so, err := f.sessionOptions(f.inner)
	if err != nil {
		return err
	}
	rootDir := filepath.Join(f.inner, "root")
	if err := os.MkdirAll(rootDir, 0o755); err != nil {
		return err
	}
	// Runs after the session closes (deferred first).
	var sc *container.Scaffold
	defer func() { sc.Remove() }()
	s, err := openSession(m, rootDir, so, logger)
	if err != nil {
		return err
	}
	defer s.close()
	c, err := jobCommand(f, m, rootDir, command)
	if err != nil {
		return err
	}
	etc := filepath.Join(f.inner, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return err
	}
	var binds []container.Bind
	for _, b := range f.binds {
		bind, _ := container.ParseBind(b)
		binds = append(binds, bind)
	}
	if s.upper != nil && !s.tempUpper {
		sc = container.NoteScaffold(s.upper.Diff, s.lower, binds)
	}
	if err := container.SetupRoot(rootDir, container.RootOptions{Binds: binds, StateDir: etc}); err != nil {
		return err
	}
	if err := container.MkdirIn(rootDir, c.Dir); err != nil {
		return fmt.Errorf("working directory %s: %w", c.Dir, err)
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted before the job started")
	}
	p, err := container.Start(c, [3]*os.File{os.Stdin, os.Stdout, os.Stderr})
	var se *container.StartError
	if errors.As(err, &se) {
		fmt.Fprintf(os.Stderr, "lazyroot: %s\n", se.Msg)
		return exitCode(se.Code)
	}
	if err != nil {
		return err
	}
	logger.Printf("started %q as pid %d", c.Args, p.Pid)
	type result struct {
		ws  unix.WaitStatus
		err error
	}
	reaped := make(chan result, 1)
	go func() {
		ws, err := container.Reap(p.Pid)
		reaped <- result{ws, err}
	}()
	for {
		select {
		case sig := <-sigs:
			p.Signal(sig)
		case r := <-reaped:
			// As init of the namespace, take down what the job left.
			unix.Kill(-1, unix.SIGKILL)
			for {
				if _, err := unix.Wait4(-1, nil, 0, nil); errors.Is(err, unix.ECHILD) {
					break
				}
			}
			if r.err != nil {
				return fmt.Errorf("wait for the job: %w", r.err)
			}
			code := container.ExitCode(r.ws)
			logger.Printf("job ended with status %d", code)
			if code == 0 {
				return nil
			}
			return exitCode(code)
		}
	}
}

// watchParent ends the job when run's first half dies: its end of the
// pipe closes. As init of the namespace, exiting takes down every process
// in it and with them every mount.
func watchParent(life *os.File) {
	syscall.CloseOnExec(int(life.Fd()))
	io.Copy(io.Discard, life)
	unix.Kill(-1, unix.SIGKILL)
	os.Exit(128 + int(unix.SIGKILL))
}

// runLogger logs to a file under the state root, or to stderr with
// --debug, so lazyroot's lines do not mix with the job's output.
func runLogger(f *runFlags) (*log.Logger, func(), error) {
	if f.debug {
		return log.New(os.Stderr, "lazyroot: ", log.LstdFlags|log.Lmicroseconds), func() {}, nil
	}
	p := filepath.Join(f.root, "logs", "run-"+filepath.Base(f.inner)+".log")
	lf, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("open log: %w", err)
	}
	return log.New(lf, "", log.LstdFlags|log.Lmicroseconds), func() { lf.Close() }, nil
}

// jobCommand works out the command, environment, user and directory from
// the image config and the flags, as container runtimes do: arguments
// after IMAGE replace Cmd and follow the Entrypoint.
func jobCommand(f *runFlags, m *mounted, root string, command []string) (container.Command, error) {
	var entrypoint, cmd, env []string
	var user, workdir string
	if cf := m.img.Config; cf != nil {
		entrypoint, cmd, env = cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.Env
		user, workdir = cf.Config.User, cf.Config.WorkingDir
	}
	if len(f.entrypoint) > 0 {
		entrypoint = nil
		if !(len(f.entrypoint) == 1 && f.entrypoint[0] == "") {
			entrypoint = f.entrypoint
		}
		cmd = nil
	}
	if len(command) > 0 {
		cmd = command
	}
	args := append(append([]string{}, entrypoint...), cmd...)
	if len(args) == 0 {
		return container.Command{}, fmt.Errorf("no command: %s has no Entrypoint or Cmd; give one after --", m.img.Name())
	}
	if f.user != "" {
		user = f.user
	}
	u, err := container.ResolveUser(root, user)
	if err != nil {
		return container.Command{}, err
	}
	if f.workdir != "" {
		workdir = f.workdir
	}
	if workdir == "" {
		workdir = "/"
	}
	if !path.IsAbs(workdir) {
		return container.Command{}, fmt.Errorf("working directory %q is not absolute", workdir)
	}
	env = mergeEnv(env, f.env)
	if !hasEnv(env, "PATH") {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	if !hasEnv(env, "HOME") {
		env = append(env, "HOME="+u.Home)
	}
	if term := os.Getenv("TERM"); term != "" && !hasEnv(env, "TERM") && isTerminal(0) {
		env = append(env, "TERM="+term)
	}
	return container.Command{Root: root, Args: args, Env: env, Dir: workdir, User: u}, nil
}

// mergeEnv sets each K=V of over in env, replacing an earlier K.
func mergeEnv(env, over []string) []string {
	out := append([]string{}, env...)
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, e := range out {
			if ek, _, _ := strings.Cut(e, "="); ek == k {
				out[i], replaced = kv, true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

func hasEnv(env []string, key string) bool {
	for _, e := range env {
		if k, _, _ := strings.Cut(e, "="); k == key {
			return true
		}
	}
	return false
}

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}
