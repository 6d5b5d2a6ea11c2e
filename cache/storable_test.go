package cache

import (
	"testing"

	"github.com/valyala/fasthttp"
)

func TestStorable(t *testing.T) {
	tests := []struct {
		name         string
		status       int
		headers      []string
		allowPrivate bool
		want         bool
	}{
		{name: "plain 200", status: 200, want: true},
		{name: "public max-age", status: 200, headers: []string{"Cache-Control", "public, max-age=60"}, want: true},
		{name: "no-cache allowed", status: 200, headers: []string{"Cache-Control", "no-cache"}, want: true},
		{name: "404 storable", status: 404, want: true},
		{name: "204 storable", status: 204, want: true},
		{name: "206 partial refused", status: 206},
		{name: "500 refused", status: 500},
		{name: "503 refused", status: 503},
		{name: "201 refused", status: 201},
		{name: "set-cookie refused", status: 200, headers: []string{"Set-Cookie", "session=abc; Path=/"}},
		{name: "set-cookie refused even when private allowed", status: 200, headers: []string{"Set-Cookie", "a=b"}, allowPrivate: true},
		{name: "no-store refused", status: 200, headers: []string{"Cache-Control", "max-age=60, no-store"}},
		{name: "no-store any case", status: 200, headers: []string{"Cache-Control", "No-Store"}},
		{name: "private refused", status: 200, headers: []string{"Cache-Control", "private"}},
		{name: "private with field list refused", status: 200, headers: []string{"Cache-Control", `private="X-A, X-B", max-age=5`}},
		{name: "private allowed", status: 200, headers: []string{"Cache-Control", "private, max-age=5"}, allowPrivate: true, want: true},
		{name: "no-store beats allowPrivate", status: 200, headers: []string{"Cache-Control", "private, no-store"}, allowPrivate: true},
		{name: "quoted comma does not split", status: 200, headers: []string{"Cache-Control", `community="no-store,private"`}, want: true},
		{name: "directive prefix is not the directive", status: 200, headers: []string{"Cache-Control", "no-store-later"}, want: true},
		{name: "vary star refused", status: 200, headers: []string{"Vary", "Accept, *"}},
		{name: "vary list fine", status: 200, headers: []string{"Vary", "Accept-Encoding"}, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h fasthttp.ResponseHeader
			h.SetStatusCode(tt.status)
			for i := 0; i+1 < len(tt.headers); i += 2 {
				h.Add(tt.headers[i], tt.headers[i+1])
			}
			if got := Storable(tt.status, &h, tt.allowPrivate); got != tt.want {
				t.Errorf("Storable = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRequestNoCache(t *testing.T) {
	tests := []struct {
		name    string
		headers []string
		want    bool
	}{
		{name: "none"},
		{name: "no-cache", headers: []string{"Cache-Control", "no-cache"}, want: true},
		{name: "no-store", headers: []string{"Cache-Control", "no-store"}, want: true},
		{name: "max-age zero", headers: []string{"Cache-Control", "max-age=0"}, want: true},
		{name: "max-age positive", headers: []string{"Cache-Control", "max-age=10"}},
		{name: "other directive", headers: []string{"Cache-Control", "max-stale"}},
		{name: "pragma", headers: []string{"Pragma", "no-cache"}, want: true},
		{name: "cache-control wins over pragma", headers: []string{"Pragma", "no-cache", "Cache-Control", "max-age=10"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h fasthttp.RequestHeader
			for i := 0; i+1 < len(tt.headers); i += 2 {
				h.Add(tt.headers[i], tt.headers[i+1])
			}
			if got := RequestNoCache(&h); got != tt.want {
				t.Errorf("RequestNoCache = %v, want %v", got, tt.want)
			}
		})
	}
}
