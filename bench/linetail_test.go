package bench

import (
	"strings"
	"testing"
)

func TestLineTail(t *testing.T) {
	tests := []struct {
		name     string
		writes   []string
		wantAddr string // "" when none must be reported
		wantTail string // the suffix Output must end with
	}{
		{name: "address on the first line", writes: []string{"listening on http://127.0.0.1:19000\n", "more\n"},
			wantAddr: "127.0.0.1:19000", wantTail: "more"},
		{name: "address split over writes", writes: []string{"listening on http://127.0.", "0.1:19001\n"},
			wantAddr: "127.0.0.1:19001", wantTail: "0.1:19001"},
		{name: "address after the scan window is not looked for",
			writes:   []string{strings.Repeat("x", addrScanBytes) + "\n", "http://127.0.0.1:19002\n"},
			wantTail: "http://127.0.0.1:19002"},
		{name: "a long write keeps only the tail", writes: []string{strings.Repeat("a", addrScanBytes+1), strings.Repeat("b", 3*tailBytes) + "end"},
			wantTail: strings.Repeat("b", tailBytes-3) + "end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &lineTail{addr: make(chan string, 1)}
			for _, w := range tt.writes {
				if n, err := l.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			select {
			case got := <-l.addr:
				if got != tt.wantAddr {
					t.Errorf("address %q, want %q", got, tt.wantAddr)
				}
			default:
				if tt.wantAddr != "" {
					t.Errorf("no address reported, want %q", tt.wantAddr)
				}
			}
			if out := l.String(); !strings.HasSuffix(out, tt.wantTail) || len(out) > tailBytes {
				t.Errorf("tail (%d bytes) ends %q, want a suffix %q within %d bytes", len(out), out[max(0, len(out)-40):], tt.wantTail, tailBytes)
			}
		})
	}
}
