package cache

import (
	"testing"
	"time"
)

func TestLifetime(t *testing.T) {
	stored := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		header string
		want   time.Duration
		ok     bool
	}{
		{"none", "Content-Type: application/json\r\n", 0, false},
		{"max-age", "Cache-Control: public, max-age=60\r\n", time.Minute, true},
		{"quoted max-age", "Cache-Control: max-age=\"30\"\r\n", 30 * time.Second, true},
		{"s-maxage wins for a shared cache", "Cache-Control: max-age=0, s-maxage=600\r\n", 10 * time.Minute, true},
		{"no-cache wins", "Cache-Control: max-age=600\r\nCache-Control: no-cache\r\n", 0, true},
		{"qualified no-cache is no-cache", "Cache-Control: no-cache=\"Set-Cookie\", max-age=60\r\n", 0, true},
		{"case", "cache-control: MAX-AGE=5\r\n", 5 * time.Second, true},
		{"max-age over Expires", "Expires: Fri, 27 Nov 2026 09:00:00 GMT\r\nCache-Control: max-age=5\r\n", 5 * time.Second, true},
		{"Expires", "Expires: Fri, 27 Nov 2026 08:00:30 GMT\r\n", 30 * time.Second, true},
		{"Expires in the past", "Expires: Thu, 26 Nov 2026 08:00:00 GMT\r\n", 0, true},
		{"invalid Expires has passed", "Expires: 0\r\n", 0, true},
		{"invalid max-age ignored", "Cache-Control: max-age=soon\r\n", 0, false},
		{"huge max-age saturates", "Cache-Control: max-age=99999999999999999999999\r\n", time.Duration(1<<63 - 1), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Lifetime([]byte(tt.header), stored)
			if got != tt.want || ok != tt.ok {
				t.Errorf("Lifetime = %v, %v; want %v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

// FuzzLifetime: any stored header block gives a lifetime that is never
// negative, and no panic.
func FuzzLifetime(f *testing.F) {
	f.Add([]byte("Cache-Control: max-age=60, s-maxage=\"5\"\r\nExpires: Fri, 27 Nov 2026 08:00:30 GMT\r\n"))
	f.Add([]byte("Cache-Control: no-cache=\"a,b\", max-age=-1\r\n"))
	f.Fuzz(func(t *testing.T, header []byte) {
		if d, _ := Lifetime(header, time.Unix(1_800_000_000, 0)); d < 0 {
			t.Fatalf("negative lifetime %v for %q", d, header)
		}
	})
}
