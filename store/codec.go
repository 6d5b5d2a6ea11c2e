package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// The File backend stores records and jobs in a small versioned binary
// format. The first bytes are fixed so that Sweep can read ExpiresAt without
// decoding the rest:
//
//	record: version(1) state(1) expiresAt(8) fingerprint(32) token(8)
//	        startedAt(8) leaseUntil(8) completedAt(8) owner(str) response
//	job:    version(1) state(1) expiresAt(8) attempts(uvarint)
//	        nextRetryAt(8) createdAt(8) updatedAt(8) tenant route lastError
//	        method uri (str) reqHeader reqBody (bytes) response
//	response: 0 | 1 status(uvarint) header(bytes) body(bytes)
//	str, bytes: uvarint length, then the bytes
//	time: int64 Unix nanoseconds, big endian; 0 is the zero time
const (
	codecVersion   = 1
	expiresOffset  = 2
	fixedHeaderLen = expiresOffset + 8
)

var errShort = errors.New("truncated")

type encoder struct{ b []byte }

func (e *encoder) byte1(v byte)     { e.b = append(e.b, v) }
func (e *encoder) u64(v uint64)     { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) time(t time.Time) { e.u64(uint64(timeNanos(t))) }
func (e *encoder) bytes(p []byte)   { e.uvarint(uint64(len(p))); e.b = append(e.b, p...) }
func (e *encoder) str(s string)     { e.uvarint(uint64(len(s))); e.b = append(e.b, s...) }

func (e *encoder) response(r *Response) {
	if r == nil {
		e.byte1(0)
		return
	}
	e.byte1(1)
	e.uvarint(uint64(r.Status))
	e.bytes(r.Header)
	e.bytes(r.Body)
}

func timeNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func nanosTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// decoder reads what encoder wrote. The first error sticks; every later read
// returns zero values. Byte slices are copied: the source (a bbolt page) is
// only valid inside its transaction.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail(errShort)
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) byte1() byte {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) time() time.Time { return nanosTime(int64(d.u64())) }

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) length() int {
	v := d.uvarint()
	if v > uint64(len(d.b)) {
		d.fail(errShort)
		return 0
	}
	return int(v)
}

func (d *decoder) bytes() []byte {
	n := d.length()
	p := d.take(n)
	if p == nil || n == 0 {
		return nil
	}
	return append([]byte(nil), p...)
}

func (d *decoder) str() string { return string(d.take(d.length())) }

func (d *decoder) response() *Response {
	switch d.byte1() {
	case 0:
		return nil
	case 1:
	default:
		d.fail(errors.New("bad response marker"))
		return nil
	}
	status := d.uvarint()
	if status > math.MaxInt32 {
		d.fail(errors.New("bad status"))
	}
	n1 := d.length()
	h := d.take(n1)
	n2 := d.length()
	b := d.take(n2)
	if d.err != nil {
		return nil
	}
	buf := make([]byte, n1+n2)
	copy(buf, h)
	copy(buf[n1:], b)
	return &Response{Status: int(status), Header: buf[:n1:n1], Body: buf[n1:]}
}

func (d *decoder) header() byte {
	if v := d.byte1(); v != codecVersion && d.err == nil {
		d.fail(fmt.Errorf("unknown format version %d", v))
	}
	return d.byte1()
}

func (d *decoder) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Errorf("%d trailing bytes", len(d.b)))
	}
	return d.err
}

// recordFixedLen is the length of a record's fields before its owner.
const recordFixedLen = tokenOffset + 8 + 3*8

// maxRecordLen bounds the length of r's encoding, so that appendRecord
// allocates once.
func maxRecordLen(r *Record) int {
	n := recordFixedLen + binary.MaxVarintLen64 + len(r.Owner) + 1
	if r.Response != nil {
		n += 3*binary.MaxVarintLen64 + len(r.Response.Header) + len(r.Response.Body)
	}
	return n
}

// appendRecord appends the encoding of r (without its key) to b.
func appendRecord(b []byte, r *Record) []byte {
	e := encoder{b: slices.Grow(b, maxRecordLen(r))}
	e.byte1(codecVersion)
	e.byte1(byte(r.State))
	e.time(r.ExpiresAt)
	e.b = append(e.b, r.Fingerprint[:]...)
	e.u64(r.Token)
	e.time(r.StartedAt)
	e.time(r.LeaseUntil)
	e.time(r.CompletedAt)
	e.str(r.Owner)
	e.response(r.Response)
	return e.b
}

// decodeRecord decodes the record stored under key. Errors wrap ErrCorrupt.
func decodeRecord(key string, v []byte) (*Record, error) {
	d := decoder{b: v}
	r := &Record{Key: key}
	r.State = State(d.header())
	r.ExpiresAt = d.time()
	copy(r.Fingerprint[:], d.take(32))
	r.Token = d.u64()
	r.StartedAt = d.time()
	r.LeaseUntil = d.time()
	r.CompletedAt = d.time()
	r.Owner = d.str()
	r.Response = d.response()
	err := d.finish()
	if err == nil && !r.State.valid() {
		err = fmt.Errorf("bad state %d", r.State)
	}
	if err == nil && (r.State == Completed) != (r.Response != nil) {
		err = errors.New("response present iff completed violated")
	}
	if err != nil {
		return nil, fmt.Errorf("%w: record %q: %v", ErrCorrupt, key, err)
	}
	return r, nil
}

// appendJob appends the encoding of j (without its id) to b.
func appendJob(b []byte, j *Job) []byte {
	e := encoder{b: b}
	e.byte1(codecVersion)
	e.byte1(byte(j.State))
	e.time(j.ExpiresAt)
	e.uvarint(uint64(max(j.Attempts, 0)))
	e.time(j.NextRetryAt)
	e.time(j.CreatedAt)
	e.time(j.UpdatedAt)
	e.str(j.Tenant)
	e.str(j.Route)
	e.str(j.LastError)
	e.str(j.Request.Method)
	e.str(j.Request.URI)
	e.bytes(j.Request.Header)
	e.bytes(j.Request.Body)
	e.response(j.Response)
	return e.b
}

// decodeJob decodes the job stored under id. Errors wrap ErrCorrupt.
func decodeJob(id string, v []byte) (*Job, error) {
	d := decoder{b: v}
	j := &Job{ID: id}
	j.State = JobState(d.header())
	j.ExpiresAt = d.time()
	attempts := d.uvarint()
	if attempts > math.MaxInt32 {
		d.fail(errors.New("bad attempts"))
	}
	j.Attempts = int(attempts)
	j.NextRetryAt = d.time()
	j.CreatedAt = d.time()
	j.UpdatedAt = d.time()
	j.Tenant = d.str()
	j.Route = d.str()
	j.LastError = d.str()
	j.Request.Method = d.str()
	j.Request.URI = d.str()
	j.Request.Header = d.bytes()
	j.Request.Body = d.bytes()
	j.Response = d.response()
	err := d.finish()
	if err == nil && !j.State.valid() {
		err = fmt.Errorf("bad state %d", j.State)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: job %s: %v", ErrCorrupt, JobRef(id), err)
	}
	return j, nil
}

// expiresAt reads the ExpiresAt of an encoded record or job without
// decoding the rest. ok is false for a value too short to hold it.
func expiresAt(v []byte) (t time.Time, ok bool) {
	if len(v) < fixedHeaderLen {
		return time.Time{}, false
	}
	return nanosTime(int64(binary.BigEndian.Uint64(v[expiresOffset:]))), true
}

// claimOffsets locate the state and token of an encoded record.
const (
	stateOffset = 1
	tokenOffset = fixedHeaderLen + 32
)

// peekClaim reads the state and token of an encoded record without
// decoding the rest. ok is false for a value too short to hold them.
func peekClaim(v []byte) (s State, token uint64, ok bool) {
	if len(v) < tokenOffset+8 || v[0] != codecVersion {
		return 0, 0, false
	}
	return State(v[stateOffset]), binary.BigEndian.Uint64(v[tokenOffset:]), true
}
