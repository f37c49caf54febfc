package container

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// User is who a command runs as.
type User struct {
	UID, GID uint32
	// Groups are the supplementary groups from the image's /etc/group.
	Groups []uint32
	// Home is the user's home directory from /etc/passwd, or "/".
	Home string
}

// ResolveUser resolves spec (USER[:GROUP], each a name or a number, as
// image configs and docker run's --user write it) against root's
// /etc/passwd and /etc/group. An empty spec is root. A number that is not
// in /etc/passwd is used as it is, with group 0, as container runtimes do.
func ResolveUser(root, spec string) (User, error) {
	if spec == "" {
		spec = "0"
	}
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	passwd := readDB(root, "/etc/passwd")
	groups := readDB(root, "/etc/group")
	u := User{Home: "/"}
	userName := ""
	if id, err := parseID(userPart); err == nil {
		u.UID = id
		for _, f := range passwd {
			if len(f) >= 6 && f[2] == userPart {
				userName, u.Home = f[0], f[5]
				u.GID, _ = parseID(f[3])
				break
			}
		}
	} else {
		found := false
		for _, f := range passwd {
			if len(f) >= 6 && f[0] == userPart {
				uid, err1 := parseID(f[2])
				gid, err2 := parseID(f[3])
				if err1 != nil || err2 != nil {
					return User{}, fmt.Errorf("user %q: bad /etc/passwd line for it", userPart)
				}
				u.UID, u.GID, u.Home, userName, found = uid, gid, f[5], f[0], true
				break
			}
		}
		if !found {
			return User{}, fmt.Errorf("user %q: not in the image's /etc/passwd", userPart)
		}
	}
	if hasGroup {
		if id, err := parseID(groupPart); err == nil {
			u.GID = id
		} else {
			found := false
			for _, f := range groups {
				if len(f) >= 3 && f[0] == groupPart {
					gid, err := parseID(f[2])
					if err != nil {
						return User{}, fmt.Errorf("group %q: bad /etc/group line for it", groupPart)
					}
					u.GID, found = gid, true
					break
				}
			}
			if !found {
				return User{}, fmt.Errorf("group %q: not in the image's /etc/group", groupPart)
			}
		}
	}
	if userName != "" {
		for _, f := range groups {
			if len(f) < 4 {
				continue
			}
			for _, member := range strings.Split(f[3], ",") {
				if member == userName {
					if gid, err := parseID(f[2]); err == nil && gid != u.GID {
						u.Groups = append(u.Groups, gid)
					}
				}
			}
		}
	}
	if u.Home == "" {
		u.Home = "/"
	}
	return u, nil
}

func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err
}

// readDB reads a colon-separated database such as /etc/passwd inside
// root; a missing or unreadable file is empty.
func readDB(root, path string) [][]string {
	b, err := ReadFileIn(root, path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var rows [][]string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rows = append(rows, strings.Split(line, ":"))
	}
	return rows
}
