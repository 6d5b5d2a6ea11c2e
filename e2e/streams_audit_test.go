package e2e

import (
	"context"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestStreamsAuditSDKGetsHeadersBeforeFirstToken: a model that sends its
// stream's headers and then thinks before its first token. openai-go's
// NewStreaming returns once the response headers are in; through ballast
// it must return then too, not only with the first token — an SDK (or
// its HTTP client) that bounds the wait for headers would otherwise give
// up on a provider that had answered. The stream then arrives whole.
func TestStreamsAuditSDKGetsHeadersBeforeFirstToken(t *testing.T) {
	t.Parallel()
	headers := make(chan struct{}) // closed when the SDK has the response headers
	var once sync.Once
	seen := func() { once.Do(func() { close(headers) }) }
	t.Cleanup(seen)
	up := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		sseHeaders(w)
		flush(w)
		select { // thinking, until the agent has the headers
		case <-headers:
		case <-r.Context().Done():
			return
		}
		openAIChatStreamBody(w, "gpt-4o-mini")
	}))
	b := startBallast(t, nil, modelRoute("openai", up, 0, "", ""))
	oc := openai.NewClient(
		option.WithBaseURL(b.base+"/openai/v1/"),
		option.WithAPIKey("sk-e2e"),
		option.WithMaxRetries(0),
		option.WithHTTPClient(httpClient(t)),
		option.WithMiddleware(func(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
			resp, err := next(req)
			seen()
			return resp, err
		}),
	)
	ctx, cancel := context.WithTimeout(testContext(t), 10*time.Second)
	defer cancel()
	type opened struct {
		stream interface {
			Next() bool
			Current() openai.ChatCompletionChunk
			Err() error
			Close() error
		}
	}
	got := make(chan opened, 1)
	go func() {
		got <- opened{oc.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model:    openai.ChatModelGPT4oMini,
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		})}
	}()
	var o opened
	select {
	case o = <-got:
	case <-time.After(5 * time.Second):
		seen() // let the upstream go on, so that the call ends
		o = <-got
		o.stream.Close()
		t.Fatal("NewStreaming did not return while the model was thinking: ballast held the stream's headers back until its first token")
	}
	defer o.stream.Close()
	text := ""
	for o.stream.Next() {
		for _, ch := range o.stream.Current().Choices {
			text += ch.Delta.Content
		}
	}
	if err := o.stream.Err(); err != nil || text != answer() {
		t.Fatalf("stream: %q, %v", text, err)
	}
}
