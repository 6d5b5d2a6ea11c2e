package cache

import (
	"testing"
	"time"
)

func TestStatusAppend(t *testing.T) {
	stale := Lookup{Remaining: -42*time.Second - 300*time.Millisecond}
	tests := []struct {
		name   string
		status Status
		want   string
	}{
		{name: "fresh hit", status: Hit(Lookup{Remaining: 376*time.Second + 900*time.Millisecond}), want: "ballast; hit; ttl=376"},
		{name: "miss stored", status: Miss(FwdURIMiss, true, false), want: "ballast; fwd=uri-miss; stored"},
		{name: "miss not stored", status: Miss(FwdURIMiss, false, false), want: "ballast; fwd=uri-miss"},
		{name: "collapsed miss", status: Miss(FwdURIMiss, false, true), want: "ballast; fwd=uri-miss; collapsed"},
		{name: "stale refreshed", status: Miss(FwdStale, true, false), want: "ballast; fwd=stale; stored"},
		{name: "stale-if-error after forward", status: StaleIfError(stale, true, 503),
			want: "ballast; fwd=stale; fwd-status=503; ttl=-43; detail=stale-if-error"},
		{name: "stale-if-error after connect failure", status: StaleIfError(stale, true, 0),
			want: "ballast; fwd=stale; ttl=-43; detail=stale-if-error"},
		{name: "stale-if-error without forward is a stale hit", status: StaleIfError(stale, false, 0),
			want: "ballast; hit; ttl=-43; detail=stale-if-error"},
		{name: "agent no-cache with fresh entry", status: Status{Fwd: FwdRequest, Stored: true}, want: "ballast; fwd=request; stored"},
		{name: "bypass", status: Status{Fwd: FwdBypass}, want: "ballast; fwd=bypass"},
		{name: "exactly expired has ttl 0", status: Hit(Lookup{}), want: "ballast; hit; ttl=0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(tt.status.Append(nil, "ballast")); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAppendAge(t *testing.T) {
	tests := []struct {
		name string
		age  time.Duration
		want string
	}{
		{name: "zero", age: 0, want: "0"},
		{name: "rounds down", age: 59*time.Second + 999*time.Millisecond, want: "59"},
		{name: "negative clamps", age: -time.Second, want: "0"},
		{name: "day", age: 24 * time.Hour, want: "86400"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(AppendAge(nil, tt.age)); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
