package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/circlebot/circlebot/internal/store"
)

const bucketBackups = "backups"

// Records keeps backup records in the bot's bbolt file.
type Records struct{ Store *store.Store }

func (r Records) SaveBackup(ctx context.Context, b *Backup) error {
	return r.Store.Put(ctx, bucketBackups, b.ID, b)
}

// Backup finds a record by backup ID, snapshot ID or s3:// URI.
func (r Records) Backup(ctx context.Context, id string) (*Backup, error) {
	if strings.HasPrefix(id, "bk-") {
		var b Backup
		if err := r.Store.Get(ctx, bucketBackups, id, &b); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return nil, fmt.Errorf("backup %s: %w", id, ErrNotFound)
			}
			return nil, err
		}
		return &b, nil
	}
	all, err := r.Backups(ctx)
	if err != nil {
		return nil, err
	}
	for _, b := range all {
		if "s3://"+b.Bucket+"/"+b.Key == id {
			return b, nil
		}
		for _, s := range b.Snapshots {
			if s.ID == id {
				return b, nil
			}
		}
	}
	return nil, fmt.Errorf("no backup made by the bot contains %s: %w", id, ErrNotFound)
}

// Backups lists every record, newest first.
func (r Records) Backups(ctx context.Context) ([]*Backup, error) {
	var out []*Backup
	err := r.Store.Each(ctx, bucketBackups, func(_ string, v []byte) error {
		var b Backup
		if err := json.Unmarshal(v, &b); err != nil {
			return err
		}
		out = append(out, &b)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read backup records: %w", err)
	}
	// Newest first by start time; IDs carry only whole seconds.
	slices.SortStableFunc(out, func(a, b *Backup) int { return b.Started.Compare(a.Started) })
	return out, nil
}

// MarkPruning notes in a backup's record that operation op began deleting
// its snapshots (Backup.Pruning). A set without a record (made by hand,
// or its record lost) gives ErrNotFound.
func (r Records) MarkPruning(ctx context.Context, id, op string) error {
	if !strings.HasPrefix(id, "bk-") {
		return fmt.Errorf("backup %s: %w", id, ErrNotFound)
	}
	b, err := r.Backup(ctx, id)
	if err != nil {
		return err
	}
	b.Pruning = op
	if err := r.SaveBackup(ctx, b); err != nil {
		return fmt.Errorf("mark backup %s as being pruned: %w", id, err)
	}
	return nil
}
