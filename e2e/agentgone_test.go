package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
)

// An agent whose SDK call times out (its context ends, as an agent
// framework's step timeout does) closes its connection; ballast then
// closes the upstream's too, so the provider stops generating — and
// billing — an answer nobody will read. Here with the real OpenAI SDK and
// ballast's default watch interval (a second).
func TestOpenAISDKTimeoutCallsTheUpstreamOff(t *testing.T) {
	var started, hungUp atomic.Int64
	up := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // net/http watches the connection once the body is read
		started.Add(1)
		select {
		case <-r.Context().Done(): // ballast closed the connection
			hungUp.Add(1)
		case <-time.After(8 * time.Second): // the slow model would have answered here
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"id":"c","object":"chat.completion","choices":[]}`)
		}
	}))
	b := startBallast(t, nil, modelRoute("openai", up, 30*time.Second, "", ""))
	client := newOpenAI(t, b)

	ctx, cancel := context.WithTimeout(testContext(t), 300*time.Millisecond)
	defer cancel()
	begin := time.Now()
	_, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model:    openai.ChatModelGPT4oMini,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Write a long essay")},
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the SDK call: %v, want its context's deadline", err)
	}
	waitFor(t, "ballast to close the upstream connection", func() bool { return hungUp.Load() == 1 })
	if took := time.Since(begin); took > 4*time.Second {
		t.Errorf("the upstream call ran %v after the agent left", took.Round(time.Millisecond))
	}
	if n := started.Load(); n != 1 {
		t.Errorf("upstream calls: %d, want 1 (no retry for an agent that left)", n)
	}
}
