//go:build !race

// sync.Pool drops items under -race, so this gate builds without it; make
// test runs the allocation gates in a second, race-free pass.

package store

import "testing"

func TestFingerprintRawDoesNotAllocate(t *testing.T) {
	method, path, body := []byte("POST"), []byte("/v1/tools/run"), []byte("plain text body, not JSON")
	ct := []byte("Content-Type: text/plain")
	Fingerprint(method, path, body, ct) // warm the pool
	if n := testing.AllocsPerRun(200, func() { Fingerprint(method, path, body, ct) }); n != 0 {
		t.Fatalf("Fingerprint(raw body) allocates %v times per call, want 0", n)
	}
}

func TestFingerprintJSONDoesNotAllocate(t *testing.T) {
	method, path := []byte("POST"), []byte("/v1/chat/completions")
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"caf\u00e9 \"quoted\""},{"content":"hi","role":"assistant"}],"temperature":0.2,"stream":false,"tools":null}`)
	ct := []byte("Content-Type: application/json")
	Fingerprint(method, path, body, ct) // warm the pool
	if n := testing.AllocsPerRun(200, func() { Fingerprint(method, path, body, ct) }); n != 0 {
		t.Fatalf("Fingerprint(JSON body) allocates %v times per call, want 0", n)
	}
}
