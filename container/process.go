package container

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// HelperArg, as the first argument, makes this program the helper that
// enters the root and execs the command (see RunHelper).
const HelperArg = "__lazyroot-exec"

// Exit codes for a command that could not be started, as shells and
// container runtimes use them.
const (
	ExitCannotRun = 126
	ExitNotFound  = 127
)

// Command is a job's command and the process state it runs with.
type Command struct {
	// Root is the directory the command is chrooted into.
	Root string `json:"root"`
	// Args are the command and its arguments; a name without a slash is
	// looked up in the PATH of Env, inside Root.
	Args []string `json:"args"`
	// Env is the command's whole environment.
	Env []string `json:"env"`
	// Dir is the working directory inside Root.
	Dir string `json:"dir"`
	// User is who the command runs as.
	User User `json:"user"`
}

// keptCapabilities are the capabilities a root command keeps: those
// container runtimes grant by default, less CAP_SYS_CHROOT (a job in a
// chroot, not a pivoted root, could leave it with another chroot) and
// CAP_NET_RAW (the job shares the node's network). Everything else,
// CAP_SYS_ADMIN (mounts), CAP_SYS_PTRACE (reaching the caller through
// /proc/1/root) and CAP_SYS_MODULE among them, is dropped from its
// bounding set.
var keptCapabilities = map[int]bool{
	unix.CAP_CHOWN: true, unix.CAP_DAC_OVERRIDE: true, unix.CAP_FOWNER: true, unix.CAP_FSETID: true,
	unix.CAP_KILL: true, unix.CAP_SETGID: true, unix.CAP_SETUID: true, unix.CAP_SETPCAP: true,
	unix.CAP_NET_BIND_SERVICE: true, unix.CAP_MKNOD: true, unix.CAP_AUDIT_WRITE: true, unix.CAP_SETFCAP: true,
}

// dropCapabilities removes every capability not kept from the bounding
// set, and clears the inheritable and ambient sets, so the command cannot
// gain a dropped one, root or not.
func dropCapabilities() error {
	for c := 0; c <= lastCap(); c++ {
		if keptCapabilities[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clear inheritable capabilities: %w", err)
	}
	return nil
}

// lastCap is the highest capability the kernel knows.
func lastCap() int {
	if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			return n
		}
	}
	return unix.CAP_LAST_CAP
}

// checkBounding fails if this thread, which execs the command, kept a
// capability dropCapabilities drops from the bounding set: a last check
// that the drop and the exec run on one thread (PR_CAPBSET_READ reads the
// calling thread's set).
func checkBounding() error {
	for c := 0; c <= lastCap(); c++ {
		if keptCapabilities[c] {
			continue
		}
		in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0)
		if err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("read capability %d of the bounding set: %w", c, err)
		}
		if in == 1 {
			return fmt.Errorf("capability %d still in the bounding set after the drop", c)
		}
	}
	return nil
}

// StartError is a command that could not be started; Code is the exit
// status a shell would give for it.
type StartError struct {
	Code int
	Msg  string
}

func (e *StartError) Error() string { return e.Msg }

// Start starts c through the helper, with the given stdin, stdout and
// stderr, and returns once the command has been exec'd. The caller reaps
// it (see Reap).
func Start(c Command, stdio [3]*os.File) (*os.Process, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	spec, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer specR.Close()
	defer specW.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer errR.Close()
	p, err := os.StartProcess(self, []string{self, HelperArg}, &os.ProcAttr{
		Files: []*os.File{stdio[0], stdio[1], stdio[2], specR, errW},
		Env:   []string{},
	})
	errW.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", c.Args[0], err)
	}
	specR.Close()
	if _, err := specW.Write(spec); err != nil {
		p.Kill()
		Reap(p.Pid)
		return nil, fmt.Errorf("start %s: %w", c.Args[0], err)
	}
	specW.Close()
	// The pipe closes when the helper execs the command; anything written
	// to it first says why it could not.
	msg, _ := io.ReadAll(io.LimitReader(errR, 4096))
	if len(msg) > 0 {
		ws, _ := Reap(p.Pid)
		code := ExitCannotRun
		if ws.Exited() {
			code = ws.ExitStatus()
		}
		return nil, &StartError{Code: code, Msg: string(msg)}
	}
	return p, nil
}

// Reap waits for the child pid to end and returns its status, reaping any
// other children on the way: a process that is init of a PID namespace
// inherits the job's orphans.
func Reap(pid int) (unix.WaitStatus, error) {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return ws, err
		}
		if got == pid {
			return ws, nil
		}
	}
}

// ExitCode is the status a shell reports for ws: the exit status, or 128
// plus the signal that killed the process.
func ExitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// RunHelper returns at once unless this process was started as the
// helper; then it enters the root and execs the command, or exits with
// ExitNotFound or ExitCannotRun. Call it first thing in main.
func RunHelper() {
	if len(os.Args) < 2 || os.Args[1] != HelperArg {
		return
	}
	// Capabilities belong to a thread, not the process: the drop, the
	// change of user and the exec must run on one thread. Unlocked, the
	// goroutine may resume on another after any syscall and exec the
	// command from a thread that kept every capability (seen once: a root
	// job with the caller's full bounding set). The thread stays locked:
	// the helper ends in exec or exit.
	runtime.LockOSThread()
	errPipe := os.NewFile(4, "error")
	unix.CloseOnExec(4)
	code, err := helper()
	fmt.Fprint(errPipe, err.Error())
	os.Exit(code)
}

// helper does RunHelper's work; it returns only on failure.
func helper() (int, error) {
	specFile := os.NewFile(3, "spec")
	b, err := io.ReadAll(io.LimitReader(specFile, 4<<20))
	specFile.Close()
	if err != nil {
		return ExitCannotRun, fmt.Errorf("read command: %w", err)
	}
	var c Command
	if err := json.Unmarshal(b, &c); err != nil || len(c.Args) == 0 {
		return ExitCannotRun, fmt.Errorf("bad command spec: %v", err)
	}
	// Only stdio reaches the command: a descriptor the caller left
	// inheritable (a FUSE device, say, which would let the job hold its
	// own file system's server hostage) is closed on exec.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return ExitCannotRun, fmt.Errorf("close inherited files: %w", err)
	}
	// A session of its own and no controlling terminal: the command can
	// read and write a terminal it was given, but cannot push input into
	// it (TIOCSTI) or stop its caller's job control. Terminal signals
	// reach it through the caller, which passes them on.
	if _, err := unix.Setsid(); err != nil {
		return ExitCannotRun, fmt.Errorf("setsid: %w", err)
	}
	if err := unix.Chroot(c.Root); err != nil {
		return ExitCannotRun, fmt.Errorf("chroot %s: %w", c.Root, err)
	}
	if err := unix.Chdir(c.Dir); err != nil {
		return ExitCannotRun, fmt.Errorf("working directory %s: %w", c.Dir, err)
	}
	if err := dropCapabilities(); err != nil {
		return ExitCannotRun, err
	}
	groups := make([]int, len(c.User.Groups))
	for i, g := range c.User.Groups {
		groups[i] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		return ExitCannotRun, fmt.Errorf("set groups: %w", err)
	}
	if err := syscall.Setgid(int(c.User.GID)); err != nil {
		return ExitCannotRun, fmt.Errorf("set gid %d: %w", c.User.GID, err)
	}
	if err := syscall.Setuid(int(c.User.UID)); err != nil {
		return ExitCannotRun, fmt.Errorf("set uid %d: %w", c.User.UID, err)
	}
	path, code, err := lookPath(c.Args[0], c.Env)
	if err != nil {
		return code, err
	}
	if err := checkBounding(); err != nil {
		return ExitCannotRun, err
	}
	err = syscall.Exec(path, c.Args, c.Env)
	switch {
	case errors.Is(err, syscall.ENOENT):
		return ExitNotFound, fmt.Errorf("%s: %w", c.Args[0], err)
	default:
		return ExitCannotRun, fmt.Errorf("%s: %w", c.Args[0], err)
	}
}

// lookPath finds name in the PATH of env, as a shell would, inside the
// current root.
func lookPath(name string, env []string) (string, int, error) {
	if strings.Contains(name, "/") {
		return name, 0, nil
	}
	pathVar := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathVar = v
		}
	}
	denied := ""
	for _, dir := range filepath.SplitList(pathVar) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if err != nil || fi.IsDir() {
			continue
		}
		if unix.Access(p, unix.X_OK) == nil {
			return p, 0, nil
		}
		denied = p
	}
	if denied != "" {
		return "", ExitCannotRun, fmt.Errorf("%s: permission denied", denied)
	}
	return "", ExitNotFound, fmt.Errorf("%s: command not found in PATH %s", name, pathVar)
}
