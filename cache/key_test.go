package cache

import "testing"

func TestNewKey(t *testing.T) {
	tests := []struct {
		name        string
		blob        string
		off, length int64
		want        Key
	}{
		{"start", "sha256:abc", 0, 65536, "sha256:abc@0+65536"},
		{"middle", "sha256:abc", 1048576, 65536, "sha256:abc@1048576+65536"},
		{"empty chunk", "sha256:abc", 7, 0, "sha256:abc@7+0"},
		{"large offset", "sha512:f00", 1 << 40, 1, "sha512:f00@1099511627776+1"},
		{"empty blob", "", 1, 2, "@1+2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NewKey(tt.blob, tt.off, tt.length); got != tt.want {
				t.Errorf("NewKey(%q, %d, %d) = %q, want %q", tt.blob, tt.off, tt.length, got, tt.want)
			}
		})
	}
}

func TestNewKeyDistinct(t *testing.T) {
	// Places that print alike when joined carelessly must stay apart.
	args := []struct {
		blob        string
		off, length int64
	}{
		{"sha256:a", 1, 23},
		{"sha256:a", 12, 3},
		{"sha256:a@1", 2, 3},
		{"sha256:a@1+2", 3, 4},
		{"sha256:a", 1, 2},
		{"sha256:b", 1, 2},
	}
	seen := make(map[Key]int)
	for i, a := range args {
		k := NewKey(a.blob, a.off, a.length)
		if j, ok := seen[k]; ok {
			t.Errorf("args %d and %d both give key %q", j, i, k)
		}
		seen[k] = i
	}
}
