package slackio

import (
	"context"
	"sync"

	"github.com/circlebot/circlebot/internal/chat"
)

// Pool runs acknowledged requests in the background, at most n at a time,
// under a context that outlives the HTTP request (which ends at the ack).
type Pool struct {
	ctx    context.Context
	sem    chan struct{}
	wg     sync.WaitGroup
	run    func(context.Context, chat.Request)
	mu     sync.Mutex
	closed bool
}

func NewPool(ctx context.Context, n int, run func(context.Context, chat.Request)) *Pool {
	return &Pool{ctx: ctx, sem: make(chan struct{}, n), run: run}
}

// Submit starts req if a slot is free and reports whether it did. It never
// blocks: the caller is inside Slack's 3-second ack window.
func (p *Pool) Submit(req chat.Request) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	select {
	case p.sem <- struct{}{}:
	default:
		return false
	}
	p.wg.Add(1)
	go func() {
		defer func() { <-p.sem; p.wg.Done() }()
		p.run(p.ctx, req)
	}()
	return true
}

// Wait returns when every submitted request has finished.
func (p *Pool) Wait() { p.wg.Wait() }

// Close refuses new requests (shutdown); Wait then sees a final count.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
}
