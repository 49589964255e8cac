package bot

import "context"

func (d Deps) resume(ctx context.Context, c Call) (Outcome, error) {
	detail, err := d.Engine.Resume(ctx, c.Cmd.ID, c.Req.UserID, c.Reply)
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
