package ascii

import (
	"bytes"
	"testing"
)

func TestEqualFoldLower(t *testing.T) {
	for _, tc := range []struct {
		b, lower string
		want     bool
	}{
		{"Cache-Control", "cache-control", true},
		{"CACHE-CONTROL", "cache-control", true},
		{"cache-control", "cache-control", true},
		{"cache-contro", "cache-control", false},
		{"cache-controls", "cache-control", false},
		{"", "", true},
		{"[", "{", false}, // '[' is not 'Z'+1's lower case: only letters fold
		{"@", "`", false},
		{"max-age", "Max-Age", false}, // lower must be lower case
		{"\xc4", "\xe4", false},       // no folding beyond ASCII
	} {
		if got := EqualFoldLower([]byte(tc.b), tc.lower); got != tc.want {
			t.Errorf("EqualFoldLower(%q, %q) = %v, want %v", tc.b, tc.lower, got, tc.want)
		}
	}
}

// For every pair of bytes, the fold agrees with bytes.EqualFold on a
// lower-case right-hand side.
func TestEqualFoldLowerAgreesWithBytes(t *testing.T) {
	for x := range 256 {
		for y := range 128 {
			b, lower := []byte{byte(x)}, string(bytes.ToLower([]byte{byte(y)}))
			want := bytes.EqualFold(b, []byte(lower)) && x < 128
			if got := EqualFoldLower(b, lower); got != want {
				t.Fatalf("EqualFoldLower(%q, %q) = %v, want %v", b, lower, got, want)
			}
		}
	}
}

func TestEqualFoldLowerDoesNotAllocate(t *testing.T) {
	b := []byte("Content-Type")
	if n := testing.AllocsPerRun(100, func() { EqualFoldLower(b, "content-type") }); n != 0 {
		t.Fatalf("%v allocations, want 0", n)
	}
}
