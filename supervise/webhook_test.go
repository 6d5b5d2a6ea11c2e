package supervise

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestWebhookPostsJSON(t *testing.T) {
	got := make(chan *http.Request, 1)
	bodies := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- r
		bodies <- string(b)
	}))
	defer srv.Close()
	w, err := NewWebhook(srv.URL + "/hooks/T0/B0/s3cr3t")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Send(context.Background(), []byte(`{"kind":"cooldown"}`)); err != nil {
		t.Fatalf("Send: %v", err)
	}
	r := <-got
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || r.URL.Path != "/hooks/T0/B0/s3cr3t" {
		t.Errorf("request %s %s %q", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
	}
	if b := <-bodies; b != `{"kind":"cooldown"}` {
		t.Errorf("body %q", b)
	}
}

// The webhook URL is a secret: no error, and no String form, may show it.
func TestWebhookErrorsNeverShowTheURL(t *testing.T) {
	const secret = "T0-B0-s3cr3t-path"
	status := func(code int, location string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if location != "" {
				w.Header().Set("Location", location)
			}
			w.WriteHeader(code)
		}))
		t.Cleanup(srv.Close)
		return srv.URL + "/" + secret + "?token=" + secret
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String() + "/" + secret
	ln.Close()

	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(hang) })

	tests := []struct {
		name    string
		url     string
		timeout time.Duration
		status  int
	}{
		{name: "server error", url: status(500, ""), status: 500},
		{name: "redirects are not followed", url: status(302, "http://127.0.0.1:1/elsewhere"), status: 302},
		{name: "connection refused", url: refused},
		{name: "timeout", url: slow.URL + "/" + secret, timeout: 50 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := NewWebhook(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			err = w.Send(ctx, []byte(`{}`))
			if !errors.Is(err, ErrWebhook) {
				t.Fatalf("err = %v, want ErrWebhook", err)
			}
			var se *StatusError
			if tt.status != 0 && (!errors.As(err, &se) || se.Status != tt.status) {
				t.Errorf("err = %v, want status %d", err, tt.status)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error shows the secret URL: %v", err)
			}
			if strings.Contains(w.String(), secret) {
				t.Errorf("String shows the URL")
			}
		})
	}
}

func TestNewWebhookRefusesBadURLsWithoutEchoingThem(t *testing.T) {
	for _, u := range []string{"", "ftp://x/s3cr3t", "/relative/s3cr3t", "http://", "http://a b/s3cr3t"} {
		_, err := NewWebhook(u)
		if !errors.Is(err, ErrWebhook) {
			t.Errorf("NewWebhook(%q) = %v, want ErrWebhook", u, err)
		}
		if err != nil && u != "" && strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("error echoes the URL: %v", err)
		}
	}
}
