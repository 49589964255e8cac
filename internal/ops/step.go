package ops

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/circlebot/circlebot/internal/journal"
)

// Work is what one step of an operation works with: the operation's ID
// (for tags and client tokens) and the typed result the steps hand on to
// each other, which the journal keeps.
type Work[R any] struct {
	ID     string
	Result *R

	mu   sync.Mutex
	save func(json.RawMessage) error
}

// Save makes the result durable now, before the step ends: what a step
// must not lose if the bot dies mid-step (a command it started on the box).
func (w *Work[R]) Save() error {
	w.mu.Lock()
	b, err := json.Marshal(w.Result)
	w.mu.Unlock()
	if err != nil || w.save == nil {
		return err
	}
	return w.save(b)
}

// StepFunc is one step with a typed result.
type StepFunc[R any] func(ctx context.Context, w *Work[R], p journal.Progress) (string, error)

// typed runs f as a journal step: the result is read from the journal
// before it runs and handed back after, whatever the outcome, so a failed
// or retried step keeps what it made.
func typed[R any](f StepFunc[R]) journal.StepFunc {
	return func(ctx context.Context, op *journal.Op, p journal.Progress) (string, error) {
		r, err := ResultOf[R](op)
		if err != nil {
			return "", err
		}
		w := &Work[R]{ID: op.ID, Result: &r, save: op.Save}
		detail, err := f(ctx, w, p)
		w.mu.Lock()
		b, merr := json.Marshal(r)
		w.mu.Unlock()
		if merr != nil {
			return detail, fmt.Errorf("keep the result of the step: %w", merr)
		}
		op.Result = b
		return detail, err
	}
}

// ResultOf decodes an operation's typed result. An operation journaled
// before results were typed kept them as strings in Data: those are read
// into the same fields (their JSON names are the old keys), command IDs
// into Commands.
func ResultOf[R any](op *journal.Op) (R, error) {
	var r R
	raw := op.Result
	if len(raw) == 0 && len(op.Data) > 0 {
		legacy := map[string]any{}
		cmds := map[string]string{}
		for k, v := range op.Data {
			switch {
			case k == "kind" || k == "plan":
			case strings.HasSuffix(k, "_command"):
				cmds[k] = v
			default:
				legacy[k] = v
			}
		}
		if len(cmds) > 0 {
			legacy["commands"] = cmds
		}
		var err error
		if raw, err = json.Marshal(legacy); err != nil {
			return r, err
		}
	}
	if len(raw) == 0 {
		return r, nil
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return r, fmt.Errorf("read what the earlier steps of %s made: %w", op.ID, err)
	}
	return r, nil
}

// Commands are the SSM commands an operation sent, by what they do: a
// step run again follows its command instead of sending another.
type Commands map[string]string

// IDList is a list of resource IDs; it also reads the comma-separated
// form that journals before typed results kept.
type IDList []string

func (l *IDList) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*l = nil
		if s != "" {
			*l = strings.Split(s, ",")
		}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(l))
}

// RestoreResult is what a restore from EBS makes, step by step.
type RestoreResult struct {
	ImageID      string `json:"image_id,omitempty"`
	InstanceID   string `json:"instance_id,omitempty"`
	InstanceType string `json:"instance_type,omitempty"`
	KeptVolumes  IDList `json:"kept_volumes,omitempty"` // the old box's volumes, kept on termination (or detached, in place)
	// NewVolumes are an in-place restore's volumes by device.
	NewVolumes map[string]string `json:"new_volumes,omitempty"`
	Commands   Commands          `json:"commands,omitempty"`
}

// TarballRestoreResult is what a tarball restore leaves on the box.
type TarballRestoreResult struct {
	// AsideBefore are the moved-aside data directories found before the
	// restore ran; MovedAside is the one this restore made.
	AsideBefore string   `json:"aside_before,omitempty"`
	MovedAside  string   `json:"moved_aside,omitempty"`
	Commands    Commands `json:"commands,omitempty"`
}

// FailoverResult is what a failover started on the replica.
type FailoverResult struct {
	Commands Commands `json:"commands,omitempty"`
}

// NoResult is the result of an operation whose steps hand nothing on.
type NoResult struct{}

// Def is a journal step made of a typed one, for steps defined outside
// ops (the engine's own kinds).
func Def[R any](name string, f StepFunc[R]) journal.Def {
	return journal.Def{Name: name, Run: typed(f)}
}
