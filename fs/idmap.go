package fs

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// overflowID is shown for an id no range maps, as user namespaces do.
const overflowID = 65534

// IDRange maps Size ids starting at Container (as the image has them) to
// ids starting at Host (as the node shows them).
type IDRange struct {
	Container, Host, Size uint32
}

// IDMap is a set of non-overlapping ranges. An empty map shows every id
// unchanged; otherwise an id outside every range shows as 65534 (nobody).
type IDMap []IDRange

// Map returns the host id for the image's id.
func (m IDMap) Map(id uint32) uint32 {
	if len(m) == 0 {
		return id
	}
	for _, r := range m {
		if id >= r.Container && id-r.Container < r.Size {
			return r.Host + (id - r.Container)
		}
	}
	return overflowID
}

// ParseIDMap parses ranges written CONTAINER:HOST:SIZE, as GrootFS and
// newuidmap take them.
func ParseIDMap(specs []string) (IDMap, error) {
	var m IDMap
	for _, spec := range specs {
		parts := strings.Split(spec, ":")
		if len(parts) != 3 {
			return nil, fmt.Errorf("id map %q: want CONTAINER:HOST:SIZE", spec)
		}
		var v [3]uint32
		for i, p := range parts {
			n, err := strconv.ParseUint(p, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("id map %q: %q is not an id", spec, p)
			}
			v[i] = uint32(n)
		}
		r := IDRange{Container: v[0], Host: v[1], Size: v[2]}
		if r.Size == 0 {
			return nil, fmt.Errorf("id map %q: size is 0", spec)
		}
		if uint64(r.Container)+uint64(r.Size) > math.MaxUint32+1 || uint64(r.Host)+uint64(r.Size) > math.MaxUint32+1 {
			return nil, fmt.Errorf("id map %q: range runs past the largest id", spec)
		}
		for _, o := range m {
			if overlaps(r.Container, r.Size, o.Container, o.Size) {
				return nil, fmt.Errorf("id map %q overlaps %d:%d:%d in the image's ids", spec, o.Container, o.Host, o.Size)
			}
			if overlaps(r.Host, r.Size, o.Host, o.Size) {
				return nil, fmt.Errorf("id map %q overlaps %d:%d:%d in the host's ids", spec, o.Container, o.Host, o.Size)
			}
		}
		m = append(m, r)
	}
	return m, nil
}

func overlaps(a, an, b, bn uint32) bool {
	return uint64(a) < uint64(b)+uint64(bn) && uint64(b) < uint64(a)+uint64(an)
}
