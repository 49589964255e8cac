package bot

import (
	"context"
	"errors"

	"github.com/circlebot/circlebot/internal/chat"
	"github.com/circlebot/circlebot/internal/engine"
)

// resume continues a stopped operation at once when its approval stands
// and nothing it acts on changed; otherwise it asks a second person again,
// showing what changed.
func (d Deps) resume(ctx context.Context, c Call) (Outcome, error) {
	detail, err := d.Engine.Resume(ctx, c.Cmd.ID, c.Req.UserID, c.Reply)
	var again *engine.NeedsApproval
	var refused *engine.ResumeRefusedError
	switch {
	case errors.As(err, &again):
		return d.ask(ctx, c, again.Plan)
	case errors.As(err, &refused):
		// Said in the channel, as a refused pre-flight at the first start
		// is: whoever watches the stopped operation learns why it still
		// waits.
		_, perr := c.Reply.Post(ctx, chat.Text(":no_entry: "+refused.Msg))
		return Outcome{Result: "refused", Detail: refused.Why}, perr
	}
	if err != nil {
		return Outcome{}, err
	}
	return Outcome{Result: "ok", Detail: detail}, nil
}

func (d Deps) cancel(ctx context.Context, c Call) (Outcome, error) {
	detail, err := d.Engine.Cancel(ctx, c.Cmd.ID, c.Req.UserID, c.Reply)
	if err != nil {
		return Outcome{}, err
	}
	return Outcome{Result: "ok", Detail: detail}, nil
}
