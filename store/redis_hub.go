package store

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ballast-proxy/ballast/policy"
)

// Back-off of the hub's reader after a failed receive.
const (
	hubMinBackoff = 50 * time.Millisecond
	hubMaxBackoff = time.Second
)

// redisHub shares one PubSub connection among every Wait of a store. Waiters
// join a channel (a record key); a syncer goroutine SUBSCRIBEs to channels
// that gained their first waiter and UNSUBSCRIBEs from those that lost their
// last, in order, batching what piled up; a reader goroutine receives the
// confirmations and messages and wakes the channel's waiters.
//
// A waiter reads the record only once its channel's SUBSCRIBE is confirmed
// (or after PollEvery at most), so a completion published after that read
// is delivered. When the connection breaks, messages are lost until
// go-redis reconnects and resubscribes; the reader then wakes every waiter
// to re-read, and each waiter also re-reads every PollEvery.
type redisHub struct {
	ps        *redis.PubSub
	clock     policy.Clock
	opTimeout time.Duration

	mu      sync.Mutex
	subs    map[string]*hubChannel // channels with local waiters
	actual  map[string]bool        // channels SUBSCRIBEd (as sent)
	pending map[string]int         // SUBSCRIBEs sent and not yet confirmed

	kick    chan struct{} // wakes the syncer; capacity 1
	closing chan struct{}
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// hubChannel is the local state of one subscribed channel.
type hubChannel struct {
	name    string
	refs    int           // joined waiters
	sent    bool          // the syncer has seen it (and subscribed if needed)
	ready   chan struct{} // closed once the subscription is confirmed
	isReady bool
	wake    chan struct{} // closed (and replaced) on every message
	blocked int           // waiters blocked after reading (tests watch it)
}

func newRedisHub(client redis.UniversalClient, clock policy.Clock, opTimeout time.Duration) *redisHub {
	ctx, cancel := context.WithCancel(context.Background())
	h := &redisHub{
		ps:        client.Subscribe(ctx), // no channels: connects lazily
		clock:     clock,
		opTimeout: opTimeout,
		subs:      make(map[string]*hubChannel),
		actual:    make(map[string]bool),
		pending:   make(map[string]int),
		kick:      make(chan struct{}, 1),
		closing:   make(chan struct{}),
		cancel:    cancel,
	}
	h.wg.Add(2)
	go h.receive(ctx)
	go h.sync(ctx)
	return h
}

// join registers a waiter on channel and returns the channel's state.
func (h *redisHub) join(channel string) *hubChannel {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.subs[channel]
	if c == nil {
		c = &hubChannel{name: channel, ready: make(chan struct{}), wake: make(chan struct{})}
		h.subs[channel] = c
		h.kickLocked()
	}
	c.refs++
	return c
}

// leave unregisters a waiter that joined c.
func (h *redisHub) leave(c *hubChannel) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c.refs--
	if c.refs == 0 && h.subs[c.name] == c {
		delete(h.subs, c.name)
		h.kickLocked()
	}
}

// wakeChan returns the channel closed by the next message on c.
func (h *redisHub) wakeChan(c *hubChannel) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return c.wake
}

func (h *redisHub) block(c *hubChannel, d int) {
	h.mu.Lock()
	c.blocked += d
	h.mu.Unlock()
}

// blocked reports how many waiters are blocked on channel.
func (h *redisHub) blocked(channel string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.subs[channel]; c != nil {
		return c.blocked
	}
	return 0
}

func (h *redisHub) kickLocked() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// sync reconciles the subscriptions with the channels waited on.
func (h *redisHub) sync(ctx context.Context) {
	defer h.wg.Done()
	for {
		select {
		case <-h.closing:
			return
		case <-h.kick:
		}
		var sub, unsub []string
		h.mu.Lock()
		for name, c := range h.subs {
			if !h.actual[name] {
				h.actual[name] = true
				h.pending[name]++
				sub = append(sub, name)
			}
			if !c.sent {
				c.sent = true
				if h.pending[name] == 0 {
					c.markReady()
				}
			}
		}
		for name := range h.actual {
			if h.subs[name] == nil {
				delete(h.actual, name)
				unsub = append(unsub, name)
			}
		}
		h.mu.Unlock()
		// go-redis remembers the channels even when the write fails and
		// resubscribes them when it reconnects, so errors need no handling
		// here: waiters poll meanwhile.
		octx, cancel := context.WithTimeout(ctx, h.opTimeout)
		if len(sub) > 0 {
			_ = h.ps.Subscribe(octx, sub...)
		}
		if len(unsub) > 0 {
			_ = h.ps.Unsubscribe(octx, unsub...)
		}
		cancel()
	}
}

// receive dispatches what the PubSub connection receives.
func (h *redisHub) receive(ctx context.Context) {
	defer h.wg.Done()
	backoff := hubMinBackoff
	broken := false
	for {
		msg, err := h.ps.Receive(ctx)
		if err != nil {
			select {
			case <-h.closing:
				return
			default:
			}
			broken = true
			t := h.clock.NewTimer(backoff)
			select {
			case <-h.closing:
				t.Stop()
				return
			case <-t.C():
			}
			backoff = min(2*backoff, hubMaxBackoff)
			continue
		}
		backoff = hubMinBackoff
		if broken {
			// go-redis reconnected and resubscribed before this receive;
			// what was published meanwhile is lost, so everyone re-reads.
			broken = false
			h.reconnected()
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				h.confirmed(m.Channel)
			}
		case *redis.Message:
			h.wakeUp(m.Channel)
		}
	}
}

func (h *redisHub) confirmed(channel string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pending[channel] > 0 {
		h.pending[channel]--
	}
	if h.pending[channel] > 0 {
		return
	}
	delete(h.pending, channel)
	if c := h.subs[channel]; c != nil && c.sent {
		c.markReady()
	}
}

func (h *redisHub) wakeUp(channel string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.subs[channel]; c != nil {
		c.wakeLocked()
	}
}

// reconnected treats every subscription as confirmed and wakes every
// waiter.
func (h *redisHub) reconnected() {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.pending)
	for _, c := range h.subs {
		if c.sent {
			c.markReady()
		}
		c.wakeLocked()
	}
}

func (c *hubChannel) markReady() {
	if !c.isReady {
		c.isReady = true
		close(c.ready)
	}
}

func (c *hubChannel) wakeLocked() {
	close(c.wake)
	c.wake = make(chan struct{})
}

// close stops both goroutines and the PubSub connection, and makes blocked
// Waits return (they watch closing).
func (h *redisHub) close() {
	close(h.closing)
	h.cancel()
	_ = h.ps.Close()
	h.wg.Wait()
}
