package kv

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Bolt keeps items in a bbolt file, one bucket per table, each value
// prefixed with its version. Each write is one transaction that checks the
// version and writes, so the conditions hold as in DynamoDB.
type Bolt struct{ DB *bolt.DB }

func (b Bolt) Get(_ context.Context, table, key string) (Item, error) {
	var it Item
	err := b.DB.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket([]byte("kv/" + table))
		if bk == nil {
			return ErrNotFound
		}
		v := bk.Get([]byte(key))
		if v == nil {
			return ErrNotFound
		}
		it = Item{Key: key, Version: int64(binary.BigEndian.Uint64(v[:8])), Value: append([]byte(nil), v[8:]...)}
		return nil
	})
	return it, err
}

func (b Bolt) Put(_ context.Context, table, key string, value []byte, version int64) (int64, error) {
	next := version + 1
	err := b.DB.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists([]byte("kv/" + table))
		if err != nil {
			return err
		}
		if have := versionOf(bk.Get([]byte(key))); have != version {
			return fmt.Errorf("%s/%s is at version %d, not %d: %w", table, key, have, version, ErrConflict)
		}
		buf := make([]byte, 8+len(value))
		binary.BigEndian.PutUint64(buf, uint64(next))
		copy(buf[8:], value)
		return bk.Put([]byte(key), buf)
	})
	return next, err
}

func versionOf(v []byte) int64 {
	if v == nil {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v[:8]))
}

func (b Bolt) Delete(_ context.Context, table, key string, version int64) error {
	return b.DB.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket([]byte("kv/" + table))
		if bk == nil {
			return fmt.Errorf("%s/%s: %w", table, key, ErrConflict)
		}
		if have := versionOf(bk.Get([]byte(key))); have != version || have == 0 {
			return fmt.Errorf("%s/%s is at version %d, not %d: %w", table, key, have, version, ErrConflict)
		}
		return bk.Delete([]byte(key))
	})
}

func (b Bolt) List(_ context.Context, table string) ([]Item, error) {
	var out []Item
	err := b.DB.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket([]byte("kv/" + table))
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(k, v []byte) error {
			out = append(out, Item{Key: string(k), Version: versionOf(v), Value: append([]byte(nil), v[8:]...)})
			return nil
		})
	})
	return out, err
}

func encodeLease(v leaseValue) []byte { b, _ := json.Marshal(v); return b }

func decodeLease(b []byte, v *leaseValue) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("kv: decode lease: %w", err)
	}
	return nil
}

func (b Bolt) Last(_ context.Context, table string, n int) ([]Item, error) {
	var out []Item
	err := b.DB.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket([]byte("kv/" + table))
		if bk == nil {
			return nil
		}
		c := bk.Cursor()
		for k, v := c.Last(); k != nil && len(out) < n; k, v = c.Prev() {
			out = append(out, Item{Key: string(k), Version: versionOf(v), Value: append([]byte(nil), v[8:]...)})
		}
		return nil
	})
	return out, err
}
