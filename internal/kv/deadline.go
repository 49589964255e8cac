package kv

import (
	"context"
	"fmt"
	"time"
)

// DefaultTimeout bounds a state call whose context carries no deadline.
const DefaultTimeout = 10 * time.Second

// Bounded wraps s so that no call runs without a deadline, and none starts
// on a context that has already ended.
//
// Why: every command, operation and background round goes through the
// state store, often while it holds a lock or an approval decision. A
// DynamoDB call whose context never ends can hang on a dead connection for
// as long as the SDK keeps retrying, and everything waiting on that lock or
// on that replica hangs with it. A caller that has a deadline (a request's,
// an operation's work context) keeps its own; one that has none gets
// timeout (DefaultTimeout when zero). bbolt ignores contexts, so the check
// for an ended context is made here for both backends alike: a cancelled
// call writes nothing.
func Bounded(s Store, timeout time.Duration) Store {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return bounded{s: s, timeout: timeout}
}

type bounded struct {
	s       Store
	timeout time.Duration
}

func (b bounded) bound(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if err := ctx.Err(); err != nil {
		return ctx, func() {}, err
	}
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	return ctx, cancel, nil
}

func (b bounded) Get(ctx context.Context, table, key string) (Item, error) {
	ctx, cancel, err := b.bound(ctx)
	defer cancel()
	if err != nil {
		return Item{}, fmt.Errorf("kv: get %s/%s: %w", table, key, err)
	}
	return b.s.Get(ctx, table, key)
}

func (b bounded) Put(ctx context.Context, table, key string, value []byte, version int64) (int64, error) {
	ctx, cancel, err := b.bound(ctx)
	defer cancel()
	if err != nil {
		return 0, fmt.Errorf("kv: put %s/%s: %w", table, key, err)
	}
	return b.s.Put(ctx, table, key, value, version)
}

func (b bounded) Delete(ctx context.Context, table, key string, version int64) error {
	ctx, cancel, err := b.bound(ctx)
	defer cancel()
	if err != nil {
		return fmt.Errorf("kv: delete %s/%s: %w", table, key, err)
	}
	return b.s.Delete(ctx, table, key, version)
}

func (b bounded) List(ctx context.Context, table string) ([]Item, error) {
	ctx, cancel, err := b.bound(ctx)
	defer cancel()
	if err != nil {
		return nil, fmt.Errorf("kv: list %s: %w", table, err)
	}
	return b.s.List(ctx, table)
}

func (b bounded) Last(ctx context.Context, table string, n int) ([]Item, error) {
	ctx, cancel, err := b.bound(ctx)
	defer cancel()
	if err != nil {
		return nil, fmt.Errorf("kv: last of %s: %w", table, err)
	}
	return b.s.Last(ctx, table, n)
}
