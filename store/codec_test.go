package store

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

func utcRecord(r *Record) Record {
	c := *r
	for _, p := range []*time.Time{&c.StartedAt, &c.LeaseUntil, &c.CompletedAt, &c.ExpiresAt} {
		*p = p.UTC()
	}
	return c
}

// sameRecord compares records field by field, times by instant and byte
// slices by content.
func sameRecord(t *testing.T, got, want *Record) {
	t.Helper()
	g, w := utcRecord(got), utcRecord(want)
	gr, wr := g.Response, w.Response
	g.Response, w.Response = nil, nil
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("record\n got %+v\nwant %+v", g, w)
	}
	if (gr == nil) != (wr == nil) {
		t.Fatalf("response %+v, want %+v", gr, wr)
	}
	if gr != nil && (gr.Status != wr.Status || !bytes.Equal(gr.Header, wr.Header) || !bytes.Equal(gr.Body, wr.Body)) {
		t.Fatalf("response %+v, want %+v", gr, wr)
	}
}

func TestRecordCodecRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		rec  *Record
	}{
		{"in flight", newClaim("k", args("a", t0), "owner-1", 42)},
		{"completed", completed(newClaim("k", args("a", t0), "o", 7), resp(`{"x":1}`), t0.Add(time.Second), time.Hour)},
		{"completed empty response", completed(newClaim("k", args("a", t0), "", 7), &Response{Status: 204}, t0, time.Hour)},
		{"unknown outcome", func() *Record { r := newClaim("k", args("a", t0), "o", 9); r.State = UnknownOutcome; return r }()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc := appendRecord(nil, tt.rec)
			got, err := decodeRecord("k", enc)
			if err != nil {
				t.Fatal(err)
			}
			sameRecord(t, got, tt.rec)
			if exp, ok := expiresAt(enc); !ok || !exp.Equal(tt.rec.ExpiresAt) {
				t.Fatalf("expiresAt = %v, %v", exp, ok)
			}
			if s, tok, ok := peekClaim(enc); !ok || s != tt.rec.State || tok != tt.rec.Token {
				t.Fatalf("peekClaim = %v, %d, %v", s, tok, ok)
			}
		})
	}
}

func TestRecordCodecRejects(t *testing.T) {
	good := appendRecord(nil, completed(newClaim("k", args("a", t0), "o", 7), resp("b"), t0, time.Hour))
	inflight := appendRecord(nil, newClaim("k", args("a", t0), "o", 7))
	tests := []struct {
		name string
		v    []byte
	}{
		{"empty", nil},
		{"unknown version", append([]byte{9}, good[1:]...)},
		{"bad state", append([]byte{1, 0}, good[2:]...)},
		{"truncated", good[:len(good)-1]},
		{"trailing bytes", append(append([]byte(nil), good...), 0)},
		{"completed without response", append(append([]byte{1, byte(Completed)}, inflight[2:len(inflight)-1]...), 0)},
		{"in flight with response", append([]byte{1, byte(InFlight)}, good[2:]...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r, err := decodeRecord("k", tt.v); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decodeRecord = %+v, %v; want ErrCorrupt", r, err)
			}
		})
	}
}

func TestJobCodecRoundTrip(t *testing.T) {
	j := testJob("j1", JobFailed, t0)
	j.ExpiresAt = t0.Add(time.Hour)
	j.Response = resp(`{"err":1}`)
	got, err := decodeJob("j1", appendJob(nil, j))
	if err != nil {
		t.Fatal(err)
	}
	sameJob(t, got, j)
	zero := &Job{ID: "z", State: JobQueued}
	got, err = decodeJob("z", appendJob(nil, zero))
	if err != nil || !reflect.DeepEqual(got, zero) {
		t.Fatalf("zero job round trip = %+v, %v", got, err)
	}
}

// FuzzDecodeRecord: the state file is outside input; decoding never panics,
// and what decodes survives a re-encoding unchanged.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(appendRecord(nil, newClaim("k", args("a", t0), "o", 1)))
	f.Add(appendRecord(nil, completed(newClaim("k", args("a", t0), "o", 1), resp("x"), t0, time.Hour)))
	f.Add([]byte{1, 2, 0, 0})
	f.Fuzz(func(t *testing.T, v []byte) {
		r, err := decodeRecord("k", v)
		if err != nil {
			return
		}
		again, err := decodeRecord("k", appendRecord(nil, r))
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		sameRecord(t, again, r)
	})
}

// FuzzDecodeJob: as FuzzDecodeRecord, for jobs.
func FuzzDecodeJob(f *testing.F) {
	f.Add(appendJob(nil, testJob("j", JobQueued, t0)))
	j := testJob("j", JobSucceeded, t0)
	j.Response = resp("r")
	f.Add(appendJob(nil, j))
	f.Fuzz(func(t *testing.T, v []byte) {
		j, err := decodeJob("j", v)
		if err != nil {
			return
		}
		again, err := decodeJob("j", appendJob(nil, j))
		if err != nil {
			t.Fatalf("re-encoded job does not decode: %v", err)
		}
		sameJob(t, again, j)
	})
}
