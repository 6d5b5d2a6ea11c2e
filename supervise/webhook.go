package supervise

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// ErrWebhook is the sentinel every webhook delivery error matches.
var ErrWebhook = errors.New("supervise: webhook delivery failed")

// StatusError is a webhook answer outside 2xx.
type StatusError struct{ Status int }

func (e *StatusError) Error() string {
	return fmt.Sprintf("supervise: webhook answered %d", e.Status)
}

// Is makes a StatusError match ErrWebhook.
func (e *StatusError) Is(target error) bool { return target == ErrWebhook }

// Webhook POSTs alert bodies as application/json to a URL. The URL is a
// secret (chat webhooks carry their token in it): it never appears in the
// Webhook's errors or in its String form. Redirects are not followed, and
// connections are not kept alive (alerts are rare), so a Webhook leaves no
// goroutine behind.
type Webhook struct {
	url    string
	client *http.Client
}

var _ Sender = (*Webhook)(nil)

// NewWebhook returns a Webhook for rawURL, which must be an absolute http
// or https URL (config validation checks it). The error, if any, does not
// contain the URL.
func NewWebhook(rawURL string) (*Webhook, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: the URL is not an absolute http or https URL", ErrWebhook)
	}
	return &Webhook{
		url: rawURL,
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:                 nil, // alerts go straight out, never through ballast itself
				DisableKeepAlives:     true,
				TLSHandshakeTimeout:   5 * time.Second,
				ResponseHeaderTimeout: 10 * time.Second,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// String hides the URL from %v and logs.
func (w *Webhook) String() string { return "webhook([redacted])" }

// Send POSTs body. Any answer other than 2xx is an error.
func (w *Webhook) Send(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: building the request", ErrWebhook)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "ballast-alerts")
	resp, err := w.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // *url.Error prints the URL; keep only its cause
		}
		return fmt.Errorf("%w: %w", ErrWebhook, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &StatusError{Status: resp.StatusCode}
	}
	return nil
}
